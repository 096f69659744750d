"""JSON Schema validation of a parsed gateway.yaml, with messages that say what to fix.

jsonschema's own messages describe the schema ("'x' does not match '^[a-z0-9]...$'"); operators
need to hear about their file. Each validator keyword gets a message written for people, located at
the offending key, with a did-you-mean hint for misspelt keys.

jsonschema is imported only to explain a document that :mod:`gateway.config.schema_predicate` finds
invalid: a configuration that loads never needs it, and a running gateway would otherwise carry
its 2.8 MiB (with referencing, rpds and attrs) for its life (issue 13). ``validate``, ``check``
and ``run`` all take this same path.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from gateway.config import schema_predicate
from gateway.config.model import METHODS, PATH_PATTERN_FORMAT, json_schema
from gateway.config.patterns import PathPattern, PatternError
from gateway.config.yamlsafe import JsonPath, Located
from gateway.errors import Problem, redact
from gateway.suggest import closest

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}
# Keys whose value is a secret reference; a plain string there is a secret written inline.
_SECRET_KEYS = frozenset({"password", "key_passphrase"})
_REFERENCE_HINT = (
    "reference it: {env: VARIABLE}, {file: /path/to/secret} or {credential: SYSTEMD_NAME}"
)
_NEVER_METHODS = {
    "TRACE": "TRACE is never relayed: it reflects requests back (cross-site tracing)",
    "CONNECT": "CONNECT is never relayed: declare a tcp target for raw streams instead",
}


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_path_pattern(instance: object) -> bool:
    if isinstance(instance, str):
        PathPattern.parse(instance)
    return True


def _path_pattern_holds(instance: object) -> bool:
    try:
        return _is_path_pattern(instance)
    except PatternError:
        return False


def reference_validator(schema: dict[str, Any]) -> Any:
    """jsonschema's Draft 2020-12 validator for ``schema``, as the check runs it: integers are
    never floats, and path patterns are a checked format."""
    from jsonschema import Draft202012Validator, FormatChecker, validators

    # JSON Schema counts 8443.0 as an integer (Draft 2020-12 section 6.1.1 of the validation
    # spec); the typed model does not, and a port written as a float is a typo worth reporting.
    strict = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator,
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer),
    )
    formats = FormatChecker(formats=())
    formats.checks(PATH_PATTERN_FORMAT, raises=PatternError)(_is_path_pattern)
    return strict(schema, format_checker=formats)


@functools.cache
def validator() -> Any:
    """The compiled jsonschema validator for the generated schema (built once per process)."""
    from jsonschema import Draft202012Validator

    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    return reference_validator(schema)


def compile_predicate(schema: dict[str, Any]) -> schema_predicate.Predicate:
    """:func:`reference_validator`'s answer to "is it valid?" without jsonschema, or
    UnsupportedSchemaError."""
    return schema_predicate.compile_schema(schema, {PATH_PATTERN_FORMAT: _path_pattern_holds})


@functools.cache
def predicate() -> schema_predicate.Predicate | None:
    """Whether a document is valid, without jsonschema; None when the schema uses a keyword
    :mod:`gateway.config.schema_predicate` does not decide (then jsonschema decides every time)."""
    try:
        return compile_predicate(json_schema())
    except schema_predicate.UnsupportedSchemaError:
        return None


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        # Masked before it is shortened: a cut could separate a URL's password from its '@'.
        value = redact(value)
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return f"{type(value).__name__} {value!r}"


def _host_hint(value: str) -> str:
    if "*" in value:
        return "wildcards are not allowed: each target names exactly one host"
    if value.endswith("."):
        return "remove the trailing dot"
    if "@" in value:
        return "user information ('user@') does not belong in a host"
    if "://" in value or "/" in value:
        return "write only the host name; put the scheme in 'scheme' and the port in 'port'"
    if ":" in value and value.count(":") == 1:
        return "write the port in 'port', not in 'host'"
    if value != value.lower():
        return f"write host names in lower case: {value.lower()!r}"
    if "%" in value:
        return "percent-encoding and IPv6 zone ids are not allowed in a host"
    return "use a DNS name of letters, digits, '-' and '.', or an IP address"


def _pattern_message(key: str | int, value: str, schema: dict[str, Any]) -> tuple[str, str, str]:
    """(code, message, hint) for a string that does not match its pattern."""
    if key in ("host", "server_name"):
        return "invalid_host", f"{value!r} is not a valid host", _host_hint(value)
    if key == "url" or key in ("endpoint", "opa_url", "token_url"):
        return "invalid_url", f"{value!r} is not an accepted URL", schema.get("description", "")
    if isinstance(key, int) or key == "allowed_cidrs":
        return "invalid_value", f"{value!r} is not valid here", schema.get("description", "")
    hint = schema.get("description", "")
    return "invalid_value", f"{value!r} is not valid for {key!r}", hint


def _problem(error: ValidationError, doc: Located) -> Problem:
    path: JsonPath = tuple(error.absolute_path)
    key = path[-1] if path else ""
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = str(error.validator)
    expected: Any = error.validator_value

    if kind in ("anyOf", "oneOf") and error.context:
        return _alternatives(error, doc)
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        if patterns and not allowed:
            # A mapping of names (targets, credentials, bind identities): the name is wrong.
            wrong = [k for k in value if not any(re.search(p, str(k)) for p in patterns)]
            name = str(wrong[0]) if wrong else "?"
            lowered = name.lower()
            valid = any(re.search(p, lowered) for p in patterns)
            return doc.problem(
                (*path, name),
                f"name {name!r} is not allowed",
                code="invalid_name",
                key=True,
                hint=f"write it in lower case: {lowered!r}"
                if valid and lowered != name
                else "names use lower-case letters, digits, '-' and '_' (at most 64)",
            )
        extra = [k for k in value if k not in allowed]
        unknown = extra[0] if extra else "?"
        close = closest(unknown, allowed)
        listed = f"allowed keys: {', '.join(allowed)}"
        hint = f"did you mean {close!r}?" if close is not None else listed
        return doc.problem(
            (*path, unknown), f"unknown key {unknown!r}", code="unknown_key", hint=hint, key=True
        )
    if kind == "required":
        return _missing_keys(error, doc)[0]
    if kind == "propertyNames":
        return doc.problem(
            (*path, str(value)),
            f"name {value!r} is not allowed",
            code="invalid_name",
            key=True,
            hint="names use lower-case letters, digits, '-' and '_' (at most 64)",
        )
    if kind == "type":
        wanted = expected
        wanted_text = (
            " or ".join(_TYPE_NAMES.get(str(w), str(w)) for w in wanted)
            if isinstance(wanted, list)
            else _TYPE_NAMES.get(wanted, str(wanted))
        )
        hint = ""
        if wanted == "boolean" and isinstance(value, str):
            hint = "write true or false without quotes; 'yes', 'no', 'on' and 'off' are strings"
        elif wanted in ("integer", "number") and isinstance(value, str):
            hint = "write a plain decimal number without quotes or leading zeros"
        return doc.problem(
            path, f"expected {wanted_text}, got {_describe(value)}", code="wrong_type", hint=hint
        )
    if kind in ("enum", "const"):
        options = expected if kind == "enum" else [expected]
        if isinstance(value, str) and value.upper() in _NEVER_METHODS and "GET" in options:
            return doc.problem(path, _NEVER_METHODS[value.upper()], code="forbidden_method")
        hint = ""
        if isinstance(value, str) and value.upper() in options and value.upper() != value:
            hint = f"methods are case-sensitive (RFC 9110 section 9.1): write {value.upper()!r}"
        elif isinstance(value, str):
            close = closest(value, [str(o) for o in options])
            hint = f"did you mean {close!r}?" if close is not None else ""
        listed = ", ".join(repr(o) for o in options)
        if set(options) == set(METHODS):
            listed = ", ".join(METHODS)
        return doc.problem(
            path, f"{_describe(value)} is not one of: {listed}", code="invalid_choice", hint=hint
        )
    if kind == "format" and isinstance(error.cause, PatternError):
        return doc.problem(
            path,
            f"{value!r}: {error.cause}",
            code=error.cause.code,
            hint="see docs/configuration.md, 'Operations and path patterns'",
        )
    if kind == "pattern" and isinstance(value, str):
        code, message, hint = _pattern_message(key, value, schema)
        return doc.problem(path, message, code=code, hint=hint)
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "more than",
            "exclusiveMaximum": "less than",
        }[kind]
        return doc.problem(path, f"must be {relation} {expected}, got {value}", code="out_of_range")
    if kind in ("minItems", "minLength", "minProperties"):
        return doc.problem(path, "must not be empty", code="empty_value")
    if kind in ("maxItems", "maxLength", "maxProperties"):
        return doc.problem(path, f"too long: the limit is {expected}", code="too_many")
    if kind == "uniqueItems" and isinstance(value, list):
        seen: set[str] = set()
        for index, item in enumerate(value):
            marker = repr(item)
            if marker in seen:
                return doc.problem(
                    (*path, index), f"{item!r} is listed twice", code="duplicate_entry"
                )
            seen.add(marker)
    return doc.problem(path, error.message, code=f"schema_{kind}")


def _missing_keys(error: ValidationError, doc: Located) -> list[Problem]:
    """One problem per required key absent from the mapping of a ``required`` error.

    jsonschema reports each absent key as an error of its own whose only trace of the key is its
    message, so every key is named here from the mapping and the schema; :func:`check` takes the
    first such error of a mapping and skips the others."""
    path: JsonPath = tuple(error.absolute_path)
    expected: Any = error.validator_value
    required = [str(name) for name in expected]
    value = error.instance
    absent = [name for name in required if isinstance(value, dict) and name not in value]
    return [
        doc.problem(path, f"missing required key {name!r}", code="missing_key")
        for name in absent or required[:1] or ["?"]
    ]


# Keywords that only say which kind of value a branch of anyOf/oneOf takes.
_KIND_KEYWORDS = frozenset({"type", "const", "enum"})


def _alternatives(error: ValidationError, doc: Located) -> Problem:
    """The problem of a value that fits no branch of an ``anyOf``/``oneOf`` (such as
    ``workers``: ``'auto'`` or an integer from 1 up).

    A branch that takes this kind of value and still fails says the most (``workers: 0`` must
    be at least 1); when every branch wants another kind of value, all the kinds are named
    instead of one branch's (``expected 'auto' or an integer``)."""
    from jsonschema.exceptions import best_match

    context = list(error.context or ())
    specific = [e for e in context if str(e.validator) not in _KIND_KEYWORDS]
    if specific:
        return _problem(best_match(specific), doc)
    choices: list[str] = []
    for branch in context:
        kind = str(branch.validator)
        options: Any = branch.validator_value
        if kind == "const":
            wanted = [repr(options)]
        elif kind == "enum":
            wanted = [repr(option) for option in options]
        else:
            continue
        choices.extend(option for option in wanted if option not in choices)
    kinds = {str(e.validator_value) for e in context if str(e.validator) == "type"}
    if not choices:
        return _problem(best_match(context), doc)
    branches: Any = error.validator_value
    for schema in branches if isinstance(branches, list) else ():
        # The types of the branches that are not a fixed choice, in schema order.
        if isinstance(schema, dict) and "const" not in schema and "enum" not in schema:
            typed = schema.get("type")
            if isinstance(typed, str) and typed in kinds and typed != "null":
                choices.append(_TYPE_NAMES.get(typed, typed))
    path: JsonPath = tuple(error.absolute_path)
    return doc.problem(
        path,
        f"expected {' or '.join(choices)}, got {_describe(error.instance)}",
        code="wrong_type",
        hint="write a plain decimal number without quotes or leading zeros"
        if isinstance(error.instance, str)
        and "an integer" in choices
        and any(c.isdigit() for c in error.instance)
        else "",
    )


def _is_secret_ref(error: ValidationError) -> bool:
    """Whether the failing schema is the secret reference's (by its title, set by the model)."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    return schema.get("title") == "SecretRef"


def check(doc: Located) -> list[Problem]:
    """Every schema violation in ``doc``, in file order."""
    valid = predicate()
    if valid is not None and valid(doc.data):
        return []
    problems: list[Problem] = []
    errors = list(validator().iter_errors(doc.data))
    # A value of the wrong type also fails its const/enum (``version: "1"``); the type says
    # what to fix, once.
    mistyped = {tuple(e.absolute_path) for e in errors if str(e.validator) == "type"}
    missing_reported: set[JsonPath] = set()
    for error in errors:
        path: JsonPath = tuple(error.absolute_path)
        kind = str(error.validator)
        if kind in ("const", "enum") and path in mistyped:
            continue
        if kind == "required":
            # One error per absent key, all alike but for the message: every key of the
            # mapping is named at its first error.
            if path not in missing_reported:
                missing_reported.add(path)
                problems.extend(_missing_keys(error, doc))
            continue
        secret_ref = _is_secret_ref(error)
        # Anything but a mapping where a secret reference belongs is the classic "password
        # written inline"; the value itself is never repeated in the message.
        if not isinstance(error.instance, dict) and (
            secret_ref or (isinstance(error.instance, str) and path and path[-1] in _SECRET_KEYS)
        ):
            problems.append(
                doc.problem(
                    path,
                    "a secret must not be written in the file",
                    code="inline_secret",
                    hint=_REFERENCE_HINT,
                )
            )
            continue
        if secret_ref and str(error.validator) in ("minProperties", "maxProperties"):
            problems.append(
                doc.problem(
                    path,
                    "a secret reference needs exactly one of 'env', 'file' or 'credential'",
                    code="invalid_secret_ref",
                    hint=_REFERENCE_HINT,
                )
            )
            continue
        problems.append(_problem(error, doc))
    problems.sort(key=lambda p: (p.file != doc.file, p.line, p.column))
    return problems
