from django.http import HttpResponse

SEEN_VIEWS: list = []


class ShortCircuitMiddleware:
    """Answers /short/ itself, without calling the next layer."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/short/":
            return HttpResponse("short")
        if request.path == "/mw-error/":
            raise MiddlewareError("middleware broke")
        return self.get_response(request)


class MiddlewareError(Exception):
    pass


class ViewSpyMiddleware:
    """Records the view objects Django hands to process_view (identity checks)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        SEEN_VIEWS.append(view_func)
        return None

    def process_exception(self, request, exception):
        if request.path == "/boom/handled/":
            return HttpResponse("handled by middleware", status=503)
        return None
