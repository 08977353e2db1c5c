"""What the web adapters share about HTTP: parsing request data (`headers`), the ASGI scope and
the WSGI environ (`asgi`, `wsgi`), and the gateway stage every HTTP timeline starts with
(`gateway`). One parser per protocol, used by every adapter."""
