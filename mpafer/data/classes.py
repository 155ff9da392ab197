"""Class names of each dataset, in label order; they match the hard-prompt banks."""

FERPLUS_CLASSES = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
# RAF-DB basic labels 1..7, shifted to 0..6.
RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
# AffectNet expression codes 0..7; 8 none, 9 uncertain and 10 no-face are never labels.
AFFECTNET8_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
AFFECTNET7_CLASSES = AFFECTNET8_CLASSES[:7]
