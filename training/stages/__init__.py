"""The two training stages as ``training.engine.loop.Task`` objects: stage 0 pre-trains a backbone,
stage 1 trains MPA-FER prompts on a frozen one."""
