from causal_fixtures import teacher_run  # noqa: F401 - the fine-tuned decoder teacher, shared by module
