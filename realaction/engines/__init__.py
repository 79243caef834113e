"""Where per-source work runs: worker processes of our own pool (`process_pool`) or Ray tasks (`ray_engine`);
`sources` picks one and yields results as sources finish, `source_tasks` is what a worker does."""
