"""web.forms: JSON Schema forms as field models, submissions back to typed values, engine errors per field."""
from __future__ import annotations

import pytest

from engine import forms as engine_forms
from engine.errors import InvalidInput
from web.forms import field_errors, fields_for, friendly_error, kind_of, parse_submission


def form(properties: dict, required: list[str] | None = None, ui: dict | None = None) -> dict:
    return {"title": "T", "schema": {"type": "object", "properties": properties, "required": required or []},
            "ui": ui}


def one(properties: dict, **kw):
    (f,) = fields_for(form(properties, kw.pop("required", None), kw.pop("ui", None)), **kw)
    return f


# --- kinds ---------------------------------------------------------------------------------------

def test_text_field_has_label_help_required_and_max_length():
    f = one({"po": {"type": "string", "title": "Purchase-order number", "description": "From the supplier",
                    "maxLength": 50}}, required=["po"])
    assert (f.kind, f.label, f.help, f.required, f.max_length) == (
        "text", "Purchase-order number", "From the supplier", True, 50)
    assert f.input_id == "field-po" and f.described_by == "field-po-help"


def test_label_falls_back_to_the_name_made_readable():
    assert one({"case_owner": {"type": "string"}}).label == "Case owner"


def test_long_strings_and_the_textarea_widget_get_a_textarea():
    assert one({"a": {"type": "string", "maxLength": 10000}}).kind == "textarea"
    assert one({"a": {"type": "string", "maxLength": 100}}).kind == "text"
    assert one({"a": {"type": "string", "maxLength": 100}}, ui={"a": {"widget": "textarea"}}).kind == "textarea"


def test_integer_and_number_fields_carry_min_max_step():
    f = one({"total": {"type": "integer", "minimum": 0, "maximum": 100000, "title": "Total"}})
    assert (f.kind, f.min, f.max, f.step) == ("integer", "0", "100000", "1")
    g = one({"rate": {"type": "number", "minimum": 0.5, "multipleOf": 0.25}})
    assert (g.kind, g.min, g.max, g.step) == ("number", "0.5", None, "0.25")
    assert one({"x": {"type": "number"}}).step == "any"


def test_camunda_long_and_decimal_fields_are_numbers():
    generated = engine_forms.form_for(None, [
        {"id": "amount", "label": "Amount (EUR)", "type": "long", "required": True},
        {"id": "rate", "label": "Rate", "type": "decimal"},
        {"id": "ok", "label": "Approved", "type": "boolean"},
        {"id": "on", "label": "Delivery", "type": "date"},
    ])
    kinds = {f.name: f.kind for f in fields_for(generated)}
    assert kinds == {"amount": "integer", "rate": "number", "ok": "checkbox", "on": "date"}
    assert [f.required for f in fields_for(generated)] == [True, False, False, False]


def test_boolean_is_a_checkbox_never_marked_required():
    f = one({"ok": {"type": "boolean", "title": "Approved"}}, required=["ok"])
    assert (f.kind, f.required, f.checked) == ("checkbox", False, False)
    assert one({"ok": {"type": "boolean"}}, values={"ok": True}).checked is True


def test_enum_is_a_select_with_titles_from_enum_names_or_one_of():
    plain = one({"d": {"type": "string", "enum": ["approve", "reject"]}})
    assert plain.kind == "select" and [(c.value, c.label) for c in plain.choices] == [
        ("approve", "approve"), ("reject", "reject")]
    named = one({"d": {"type": "string", "enum": ["a", "r"], "enumNames": ["Approve", "Reject"]}})
    assert [(c.value, c.label) for c in named.choices] == [("a", "Approve"), ("r", "Reject")]
    one_of = one({"d": {"type": "integer", "oneOf": [{"const": 1, "title": "Low"}, {"const": 2, "title": "High"}]}})
    assert one_of.kind == "select" and [(c.value, c.label) for c in one_of.choices] == [("1", "Low"), ("2", "High")]


def test_camunda_enum_options_keep_their_names():
    generated = engine_forms.form_for(None, [{"id": "channel", "label": "Channel", "type": "enum",
                                              "options": [{"id": "mail", "name": "E-mail"},
                                                          {"id": "tel", "name": "Telephone"}]}])
    (f,) = fields_for(generated)
    assert [(c.value, c.label) for c in f.choices] == [("mail", "E-mail"), ("tel", "Telephone")]


def test_dates_and_date_times():
    assert kind_of({"type": "string", "format": "date"}) == "date"
    assert kind_of({"type": "string", "format": "date-time"}) == "datetime"
    f = one({"at": {"type": "string", "format": "date-time"}}, values={"at": "2026-03-01T12:00:00Z"},
            time_zone="Asia/Shanghai")
    assert f.value == "2026-03-01T20:00"  # shown in the user's zone, as datetime-local wants it
    assert one({"on": {"type": "string", "format": "date"}}, values={"on": "2026-03-01"}).value == "2026-03-01"


def test_objects_and_arrays_are_json_textareas():
    f = one({"items": {"type": "array"}}, values={"items": [1, 2]})
    assert f.kind == "json" and f.value == "[\n  1,\n  2\n]"


def test_ui_order_then_schema_order():
    names = [f.name for f in fields_for(form({"a": {}, "b": {}, "c": {}}, ui={"order": ["c", "nope", "a"]}))]
    assert names == ["c", "a", "b"]


def test_submitted_values_win_over_stored_ones_and_default_fills_an_empty_form():
    props = {"n": {"type": "integer", "default": 5}, "ok": {"type": "boolean"}}
    assert [f.value for f in fields_for(form(props))][0] == "5"
    again = fields_for(form(props), values={"n": 1, "ok": True}, submitted={"n": "abc"})
    assert again[0].value == "abc" and again[1].checked is False  # an unchecked box is absent from a post


def test_no_form_no_fields():
    assert fields_for(None) == [] and parse_submission(None, {"x": "1"}).values == {}


# --- parsing ------------------------------------------------------------------------------------

ALL = form({
    "item": {"type": "string"},
    "notes": {"type": "string", "maxLength": 4000},
    "count": {"type": "integer"},
    "price": {"type": "number"},
    "ok": {"type": "boolean"},
    "choice": {"type": "integer", "enum": [1, 2, 3]},
    "on": {"type": "string", "format": "date"},
    "at": {"type": "string", "format": "date-time"},
    "extra": {"type": "object"},
})


def test_parse_every_kind_to_its_type():
    parsed = parse_submission(ALL, {
        "item": "Laptop", "notes": "line 1\r\nline 2", "count": " 12 ", "price": "12.5", "ok": "true",
        "choice": "2", "on": "2027-03-27", "at": "2027-03-27T14:30", "extra": '{"a": [1]}',
        "csrf_token": "xyz",
    }, time_zone="Europe/Berlin")
    assert parsed.errors == {}
    assert parsed.values == {
        "item": "Laptop", "notes": "line 1\nline 2", "count": 12, "price": 12.5, "ok": True, "choice": 2,
        "on": "2027-03-27", "at": "2027-03-27T13:30:00Z", "extra": {"a": [1]},
    }


def test_whole_numbers_stay_integers_and_unchecked_box_is_false():
    parsed = parse_submission(ALL, {"price": "12", "count": "-3"})
    assert parsed.values == {"price": 12, "count": -3, "ok": False}
    assert type(parsed.values["price"]) is int


def test_empty_controls_are_left_out_so_the_engine_says_required():
    parsed = parse_submission(ALL, {"item": "  ", "count": "", "on": ""})
    assert parsed.values == {"ok": False} and parsed.errors == {}


def test_text_that_is_not_of_its_kind_is_a_field_error():
    parsed = parse_submission(ALL, {"count": "1.5", "price": "12,5", "on": "2027-02-30", "at": "soon",
                                    "extra": "{nope"})
    assert set(parsed.errors) == {"count", "price", "on", "at", "extra"}
    assert parsed.errors["count"] == "Enter a whole number, like 12."
    assert parsed.errors["on"] == "Enter a real date, like 2027-03-27."
    assert "count" not in parsed.values


def test_number_overflow_is_refused_not_infinite():
    assert parse_submission(ALL, {"price": "1e400"}).errors == {"price": "Enter a number, like 12 or 12.5."}


def test_camunda_long_and_decimal_keep_their_text_for_the_engine_to_convert():
    generated = engine_forms.form_for(None, [{"id": "amount", "type": "long"}, {"id": "rate", "type": "decimal"}])
    parsed = parse_submission(generated, {"amount": "1200", "rate": "0.10"})
    assert parsed.values == {"amount": "1200", "rate": "0.10"}
    stored = engine_forms.coerce_fields([{"id": "amount", "type": "long"}, {"id": "rate", "type": "decimal"}],
                                        parsed.values)
    assert stored["amount"] == 1200 and str(stored["rate"]) == "0.10"


def test_an_unknown_choice_is_passed_on_for_the_engine_to_refuse():
    parsed = parse_submission(ALL, {"choice": "9"})
    assert parsed.values["choice"] == "9"
    with pytest.raises(InvalidInput) as refused:
        engine_forms.validate(ALL, parsed.values)
    assert "choice" in refused.value.context["errors"]


def test_parse_messages_are_translated():
    parsed = parse_submission(ALL, {"count": "x"}, gettext=lambda s: f"[{s}]")
    assert parsed.errors["count"] == "[Enter a whole number, like 12.]"


# --- engine errors next to fields ---------------------------------------------------------------

def engine_refusal(f: dict, values: dict) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        engine_forms.validate(f, values)
    return refused.value


def test_engine_errors_are_placed_next_to_their_fields_in_plain_words():
    budget = form({"total": {"type": "integer", "minimum": 0, "title": "Total"},
                   "notes": {"type": "string", "maxLength": 5},
                   "decision": {"type": "string", "enum": ["approve", "reject"]}},
                  required=["total", "decision"])
    err = engine_refusal(budget, {"notes": "far too long"})
    fields = fields_for(budget)
    per_field, general = field_errors(fields, err.context["errors"], message=err.message)
    assert per_field == {"total": "Enter a value; this field is required.", "decision": "Choose an option.",
                         "notes": "Enter at most 5 characters."}
    assert general == []
    err = engine_refusal(budget, {"total": -1, "decision": "maybe"})
    per_field, _ = field_errors(fields, err.context["errors"])
    assert per_field == {"total": "Enter a number of at least 0.", "decision": "Choose one of the options."}


def test_camunda_field_errors_are_placed_too():
    fields_meta = [{"id": "amount", "type": "long", "required": True}]
    with pytest.raises(InvalidInput) as refused:
        engine_forms.coerce_fields(fields_meta, {"amount": "lots"})
    per_field, _ = field_errors(fields_for(engine_forms.form_for(None, fields_meta)),
                                refused.value.context["errors"])
    assert per_field == {"amount": "Enter a whole number, like 12."}


def test_refusals_naming_no_field_go_above_the_form():
    fields = fields_for(form({"a": {"type": "string"}}))
    per_field, general = field_errors(fields, {"hacked": "is not a field of this form"})
    assert per_field == {} and general == ["hacked: is not a field of this form"]
    assert field_errors(fields, None, message="the form's schema is invalid") == ({}, ["the form's schema is invalid"])


def test_unknown_engine_messages_are_shown_as_written():
    (f,) = fields_for(form({"a": {"type": "string"}}))
    assert friendly_error("'x' is not a 'email'", f) == "'x' is not a 'email'"


def test_errors_join_aria_describedby():
    (f,) = fields_for(form({"a": {"type": "string", "description": "help"}}), errors={"a": "Enter a value"})
    assert f.error == "Enter a value" and f.described_by == "field-a-help field-a-error"


# --- the _form.html macros ----------------------------------------------------------------------

def render_fields(fields, general=()) -> str:
    from pathlib import Path

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "web" / "templates"),
                      autoescape=select_autoescape(default=True))
    page = env.from_string('{% import "employee/_form.html" as form with context %}'
                           "{{ form.error_summary(fields, general) }}{{ form.fields(fields) }}")
    return page.render(fields=fields, general=list(general), _=lambda s: s)


def parsed_html(html: str) -> list[tuple[str, dict]]:
    from html.parser import HTMLParser

    found: list[tuple[str, dict]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    P().feed(html)
    return found


def test_every_control_has_a_label_and_its_help_and_error_are_described_by():
    fields = fields_for(ALL | {"schema": {**ALL["schema"], "required": ["item", "count"]}},
                        errors={"count": "Enter a whole number, like 12."})
    fields[0].help = "What you need"
    html = render_fields(fields)
    elements = parsed_html(html)
    ids = {a["id"] for _, a in elements if "id" in a}
    labels = {a["for"] for t, a in elements if t == "label"}
    controls = [(t, a) for t, a in elements if t in ("input", "select", "textarea")]
    assert len(controls) == len(fields)
    for _tag, attrs in controls:
        assert attrs["id"] in labels, attrs
        for ref in (attrs.get("aria-describedby") or "").split():
            assert ref in ids, ref
    kinds = {a["name"]: (t, a.get("type")) for t, a in controls}
    assert kinds == {"item": ("input", "text"), "notes": ("textarea", None), "count": ("input", "number"),
                     "price": ("input", "number"), "ok": ("input", "checkbox"), "choice": ("select", None),
                     "on": ("input", "date"), "at": ("input", "datetime-local"), "extra": ("textarea", None)}
    count = next(a for _t, a in controls if a["name"] == "count")
    assert count["aria-invalid"] == "true" and "required" in count and count["step"] == "1"
    assert 'id="field-count-error"' in html and "Enter a whole number, like 12." in html
    assert '<a href="#field-count">Count: Enter a whole number, like 12.</a>' in html  # the summary links to it
    assert html.count('class="required-mark"') == 2


def test_values_and_labels_are_escaped_and_selected_choice_kept():
    f = fields_for(form({"d": {"enum": ["a", "<b>"], "title": "<script>x</script>"},
                         "t": {"type": "string"}}), submitted={"d": "<b>", "t": '"><script>'})
    html = render_fields(f)
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert '<option value="&lt;b&gt;" selected>' in html
    assert 'value="&#34;&gt;&lt;script&gt;"' in html


def test_no_error_summary_without_errors_and_general_errors_listed():
    fields = fields_for(form({"a": {"type": "string"}}))
    assert "error-summary" not in render_fields(fields)
    assert "<li>hacked: is not a field of this form</li>" in render_fields(fields, ["hacked: is not a field of this form"])
