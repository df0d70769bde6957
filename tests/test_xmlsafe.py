"""Hostile uploads are refused before SpiffWorkflow sees them, and nothing is stored."""
from __future__ import annotations

import pytest

from engine.config import Settings
from engine.errors import InvalidDefinition
from engine.loading import UploadedFile, parse_bundle
from engine.xmlsafe import parse
from tests.bpmnkit import approval_chain
from tests.helpers import deploy_xml, snapshot

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE bpmn:definitions [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
  <bpmn:process id="p" isExecutable="true"><bpmn:startEvent id="s"><bpmn:documentation>&xxe;</bpmn:documentation>
  </bpmn:startEvent></bpmn:process></bpmn:definitions>"""

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">&lol4;</bpmn:definitions>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE d SYSTEM "http://127.0.0.1:1/evil.dtd">
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d"/>"""

UTF16_DOCTYPE = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'.encode("utf-16")

LIMITS = {"max_bytes": 5 * 1024 * 1024, "max_depth": 100}


@pytest.mark.parametrize("payload", [XXE, LAUGHS, EXTERNAL_DTD], ids=["xxe", "billion-laughs", "external-dtd"])
def test_doctype_and_entities_are_refused(payload):
    with pytest.raises(InvalidDefinition, match="DOCTYPE|DTD"):
        parse(payload, "evil.bpmn", **LIMITS)


def test_doctype_hidden_in_utf16_is_refused():
    with pytest.raises(InvalidDefinition):
        parse(UTF16_DOCTYPE, "evil.bpmn", **LIMITS)


def test_oversize_upload_is_refused_before_parsing():
    big = b"<a>" + b" " * (5 * 1024 * 1024) + b"</a>"
    with pytest.raises(InvalidDefinition, match="limit is 5242880 bytes"):
        parse(big, "big.bpmn", **LIMITS)


def test_deep_nesting_is_refused():
    deep = b"<a>" * 150 + b"</a>" * 150
    with pytest.raises(InvalidDefinition, match="deeper than 100"):
        parse(deep, "deep.bpmn", **LIMITS)


def test_malformed_xml_names_file_and_line():
    with pytest.raises(InvalidDefinition) as err:
        parse(b"<a>\n<b>\n</a>", "broken.bpmn", **LIMITS)
    assert err.value.context["file"] == "broken.bpmn" and err.value.context["line"] == 3


def test_not_bpmn_at_all_is_refused():
    with pytest.raises(InvalidDefinition, match="neither a BPMN 2.0 nor a DMN"):
        parse_bundle([UploadedFile("x.bpmn", b"<html><body/></html>")], Settings())


def test_xxe_never_reaches_the_task_documentation():
    """Even with the scan bypassed, the parser itself does not resolve entities."""
    from engine import xmlsafe

    root = xmlsafe.etree.fromstring(XXE, xmlsafe._parser())
    text = "".join(root.itertext())
    assert "root:" not in text


@pytest.mark.parametrize("payload", [XXE, LAUGHS, b"<not-closed>", b"\x00\x01garbage"])
def test_hostile_deploy_stores_nothing(db, payload):
    deploy_xml(db, approval_chain().xml())
    before = snapshot(db)
    with pytest.raises(InvalidDefinition):
        deploy_xml(db, payload, "evil.bpmn")
    assert snapshot(db) == before
