from django.http import HttpResponse

SEEN_VIEWS: list = []


class ShortCircuitMiddleware:
    """Answers /short/ itself, without calling the next layer."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/short/":
            return HttpResponse("short")
        return self.get_response(request)


class ViewSpyMiddleware:
    """Records the view objects Django hands to process_view (identity checks)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        SEEN_VIEWS.append(view_func)
        return None
