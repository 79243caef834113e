"""What a run writes: clip rows and samples (`samples`), shards committed so a kill loses nothing (`shards`,
`tar_writer`), and summary.json with the data card (`report`)."""
