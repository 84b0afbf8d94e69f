"""The investigator web UI of `stirscope serve`: server-rendered pages, no build step."""
