from django.core.cache.backends.locmem import LocMemCache


class WeirdCache(LocMemCache):
    """A third-party backend with unusual returns: get_many gives None, has_key a string."""

    def get_many(self, keys, version=None):
        super().get_many(keys, version)
        return None

    def has_key(self, key, version=None):
        return "maybe"
