"""What runs below training: who started this process (:mod:`.launch`), its device and precision
(:mod:`.device`), the process group (:mod:`.distributed`), independent jobs side by side on a worker
pool (:mod:`.pool`) and stop signals (:mod:`.signals`). Nothing here imports training, data or the CLI."""
