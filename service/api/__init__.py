"""The HTTP service: ``create_app(config)`` in ``service.api.app``; one router per resource."""
