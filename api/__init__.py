"""The HTTP layer: routes, the event stream, errors, access control and the OpenAPI document."""
