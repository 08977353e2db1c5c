"""Configuration: layers and their precedence, validation, and what the options do."""

from __future__ import annotations

import pytest

import stagetrace
from stagetrace import _options, _recorder, _runtime
from stagetrace.sinks import ConsoleSink, JsonlSink, MemorySink

from .conftest import begin


def test_defaults_without_any_configuration():
    """With nothing configured: enabled, everything sampled, 2000 stages, no sinks."""
    s = stagetrace.settings()
    assert s.enabled is True and s.sample_rate == 1.0 and s.max_stages == 2000
    assert s.sinks == () and s.service == "unknown_service" and s.exclude_paths == ()
    assert s.record_sql_params is False


def test_precedence_is_explicit_then_settings_then_environment_then_default(monkeypatch):
    """Each layer overrides the ones below it, option by option."""
    monkeypatch.setenv("STAGETRACE_MAX_STAGES", "50")
    monkeypatch.setenv("STAGETRACE_SAMPLE_RATE", "0.5")
    monkeypatch.setenv("STAGETRACE_SERVICE", "from-env")
    _runtime.configure_from_framework(
        {"sample_rate": 0.25, "service": "from-settings"}, "settings.STAGETRACE"
    )
    s = stagetrace.configure(service="explicit")
    assert s.service == "explicit"
    assert s.sample_rate == 0.25
    assert s.max_stages == 50
    assert s.queue_size == 1000


def test_configure_is_cumulative_and_reset_forgets():
    """configure() keeps earlier explicit options; reset() returns to defaults."""
    stagetrace.configure(max_stages=5)
    s = stagetrace.configure(sample_rate=0.1)
    assert s.max_stages == 5 and s.sample_rate == 0.1
    stagetrace.reset()
    assert stagetrace.settings().max_stages == 2000


def test_service_defaults_to_the_opentelemetry_service_name(monkeypatch):
    """OTEL_SERVICE_NAME, then service.name in OTEL_RESOURCE_ATTRIBUTES, name the service."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=x,service.name=billing")
    assert stagetrace.configure().service == "billing"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    assert stagetrace.configure().service == "shop"


@pytest.mark.parametrize("env", ["STAGETRACE_SERVICE", "OTEL_SERVICE_NAME"])
def test_a_service_name_that_is_not_utf8_fails_at_startup(monkeypatch, env):
    """Undecodable bytes in the environment (a Latin-1 deploy file) reach Python as lone
    surrogates, which no export can encode: refused in one line at configuration, rather than
    accepted and every timeline lost later."""
    monkeypatch.setenv(env, "caf\udce9")
    with pytest.raises(
        stagetrace.ConfigurationError, match="expected text that is valid UTF-8"
    ) as info:
        stagetrace.configure()
    assert "\n" not in str(info.value) and env in str(info.value)
    with pytest.raises(stagetrace.ConfigurationError, match="'service' \\(configure\\(\\)\\)"):
        stagetrace.configure(service="caf\udce9")


def test_environment_is_read_at_configure_time_not_per_request(monkeypatch, captured):
    """Changing the environment after configuration changes nothing until configure()."""
    stagetrace.configure()
    monkeypatch.setenv("STAGETRACE_ENABLED", "false")
    with stagetrace.timeline("job"):
        pass
    assert len(captured) == 1
    stagetrace.configure()
    with stagetrace.timeline("job"):
        pass
    assert len(captured) == 1


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        (
            "STAGETRACE_SAMPLE_RATE",
            "lots",
            r"'sample_rate' \(environment STAGETRACE_SAMPLE_RATE\): expected a number from 0 to 1, got 'lots'",
        ),
        ("STAGETRACE_SAMPLE_RATE", "1.5", "expected a number from 0 to 1"),
        ("STAGETRACE_MAX_STAGES", "0", "'max_stages'.*expected a whole number of at least 1"),
        ("STAGETRACE_ENABLED", "maybe", "'enabled'.*expected true or false"),
        ("STAGETRACE_SINKS", "console,kafka", "'sinks'.*'kafka' is not one"),
        ("STAGETRACE_EXCLUDE_PATHS", "/health,[", "'exclude_paths'.*valid regular expressions"),
        ("STAGETRACE_COLOR", "pink", "'color'.*'auto', 'always' or 'never'"),
        ("STAGETRACE_SINKS", "jsonl", "lists 'jsonl' but no file is set"),
        (
            "STAGETRACE_OTEL_FLUSH_TIMEOUT",
            "abc",
            "'otel_flush_timeout'.*a number of seconds above 0",
        ),
        ("STAGETRACE_OTEL_FLUSH_TIMEOUT", "0", "'otel_flush_timeout'.*a number of seconds above 0"),
        ("STAGETRACE_OTEL_KEEP_SLOWER_THAN_MS", "-1", "a number of milliseconds"),
        ("STAGETRACE_OTLP_ENDPOINT", "http://caf\udce9:4318", "'otlp_endpoint'.*valid UTF-8"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=caf\udce9", "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_bad_environment_values_fail_with_one_clear_line(monkeypatch, env, value, message):
    """A bad value names the option, where it came from, and what is accepted."""
    monkeypatch.setenv(env, value)
    with pytest.raises(stagetrace.ConfigurationError, match=message) as info:
        stagetrace.configure()
    assert "\n" not in str(info.value)


def test_bad_explicit_value_keeps_the_previous_configuration():
    """A rejected configure() call leaves the configuration in force untouched."""
    stagetrace.configure(max_stages=7)
    with pytest.raises(stagetrace.ConfigurationError, match=r"'max_stages' \(configure\(\)\)"):
        stagetrace.configure(max_stages=-1)
    with pytest.raises(
        stagetrace.ConfigurationError,
        match=r"unknown stagetrace option 'max_stage' .*did you mean 'max_stages'",
    ):
        stagetrace.configure(max_stage=3)
    assert stagetrace.settings().max_stages == 7


@pytest.mark.parametrize(
    ("option", "text", "meant"),
    [("enabled", "false", "False"), ("sample_rate", "0.5", "0.5"), ("max_stages", "100", "100")],
)
def test_text_given_in_code_is_refused_with_what_to_write_instead(option, text, meant):
    """Text such as ``"false"`` is an option's value only in the environment; given in code
    (Django's ``STAGETRACE = {"enabled": "false"}``) it is refused — a non-empty string is
    truthy, so guessing could switch on what the user meant off — and the one-line error says
    what to write, instead of the contradiction "expected true or false, got 'false'"."""
    with pytest.raises(stagetrace.ConfigurationError) as info:
        _runtime.configure_from_framework({option: text}, "settings.STAGETRACE")
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith(f"in code write {meant})"), message


def test_bad_framework_settings_name_their_source():
    """Errors in the framework layer say they came from it."""
    with pytest.raises(stagetrace.ConfigurationError, match=r"settings\.STAGETRACE"):
        _runtime.configure_from_framework({"sample_rate": "high"}, "settings.STAGETRACE")
    with pytest.raises(stagetrace.ConfigurationError, match="must be a dict"):
        _runtime.configure_from_framework(["x"], "settings.STAGETRACE")  # type: ignore[arg-type]


def test_environment_lists_accept_commas_or_json(monkeypatch):
    """Comma lists for simple values; a JSON array when a regex itself has commas."""
    monkeypatch.setenv("STAGETRACE_EXCLUDE_PATHS", "^/health$, ^/static/")
    assert stagetrace.configure().exclude_paths == ("^/health$", "^/static/")
    monkeypatch.setenv("STAGETRACE_EXCLUDE_PATHS", '["^/a{1,3}$"]')
    assert stagetrace.configure().exclude_paths == ("^/a{1,3}$",)


@pytest.mark.parametrize(
    ("value", "patterns"),
    [
        ("^/a{1,3}$,^/health$", ("^/a{1,3}$", "^/health$")),
        ("^/(api|v1,v2)/, ^/static/", ("^/(api|v1,v2)/", "^/static/")),
        ("[0-9]+$,^/x", ("[0-9]+$", "^/x")),
        ("^/[],]x, y", ("^/[],]x", "y")),
        (r"^/a\,b,c", (r"^/a\,b", "c")),
        # a "{" that is no repetition count is a literal: it opens nothing
        (r"^/legacy\?q={,^/health$", (r"^/legacy\?q={", "^/health$")),
    ],
)
def test_environment_regexes_split_only_between_them(monkeypatch, value, patterns):
    """A comma list of regexes is split at the commas between them, not inside a repetition
    count, a group or a character class (``^/a{1,3}$`` used to become two regexes that both
    compile, silently excluding the wrong paths), and one starting with ``[`` that is no JSON
    array is a regex, not a JSON error."""
    monkeypatch.setenv("STAGETRACE_EXCLUDE_PATHS", value)
    assert stagetrace.configure().exclude_paths == patterns


def test_sinks_by_name_and_as_objects(tmp_path, monkeypatch):
    """Sink names build the built-in sinks; objects are used as they are; a jsonl path alone
    turns the jsonl sink on."""
    mine = MemorySink(3)
    s = stagetrace.configure(sinks=["console", "memory", mine], memory_size=9)
    assert isinstance(s.sinks[0], ConsoleSink) and s.sinks[2] is mine
    assert isinstance(s.sinks[1], MemorySink) and s.sinks[1]._items.maxlen == 9
    stagetrace.reset()
    monkeypatch.setenv("STAGETRACE_JSONL", str(tmp_path / "t.jsonl"))
    (sink,) = stagetrace.configure().sinks
    assert isinstance(sink, JsonlSink) and sink.path == str(tmp_path / "t.jsonl")


def test_a_jsonl_path_in_a_missing_directory_fails_at_startup(tmp_path):
    """The jsonl sink checks its directory when configured, not when the first request ends."""
    with pytest.raises(stagetrace.ConfigurationError, match="does not exist"):
        stagetrace.configure(jsonl=str(tmp_path / "nope" / "t.jsonl"))


def test_a_sink_object_without_emit_is_rejected():
    with pytest.raises(stagetrace.ConfigurationError, match="has no emit"):
        stagetrace.configure(sinks=[object()])


def test_a_misspelt_sink_gets_a_suggestion_and_the_public_class_name():
    """The one line says which sink was meant; tracebacks name the class as users import it."""
    with pytest.raises(
        stagetrace.ConfigurationError, match=r"'consol' is not one \(did you mean 'console'\?\)"
    ):
        stagetrace.configure(sinks=["consol"])
    assert f"{stagetrace.ConfigurationError.__module__}.ConfigurationError" == (
        "stagetrace.ConfigurationError"
    )


def test_disabled_records_nothing(captured):
    """enabled=False: no timeline starts at all."""
    stagetrace.configure(enabled=False)
    assert begin("x") is None
    with stagetrace.timeline("job"):
        pass
    assert captured == []


def test_sample_rate_records_about_that_fraction(captured):
    """sample_rate decides per timeline; 0 records none, 0.3 about 30 %."""
    stagetrace.configure(sample_rate=0.0)
    for _ in range(50):
        with stagetrace.timeline("job"):
            pass
    assert captured == []
    stagetrace.configure(sample_rate=0.3)
    for _ in range(2000):
        with stagetrace.timeline("job"):
            pass
    assert 450 < len(captured) < 750


def test_exclude_paths_skip_matching_requests(captured):
    """A path matching any exclude regex is not recorded."""
    stagetrace.configure(exclude_paths=[r"^/health$", r"^/static/"])
    for path in ("/health", "/static/app.css", "/books/", "/healthz"):
        root = begin(f"GET {path}", path=path)
        _recorder.end(root)
    assert [t.path for t in captured] == ["/books/", "/healthz"]


def test_known_options_are_documented():
    """Every option has a one-line description (used by the README table)."""
    names = [n for n, doc in _options.known_options() if doc]
    assert names == list(_options.OPTIONS)
