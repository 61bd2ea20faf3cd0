"""The lab's ground floor: the loaded-model interface and its loading, architecture adapters, weight
edits, LM evaluation, the job runner, the run store, paths and errors. Features build on it; it
imports nothing from them."""
