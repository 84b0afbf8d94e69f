"""stirscope.service: the faces (CLI, HTTP API, listeners). Wall clock, argv and env live here."""
