"""Hostile-input-proof XML parsing for uploaded BPMN and DMN files.

Invariant: SpiffWorkflow only ever sees trees produced here. Entities are never
resolved, no network or DTD is loaded, any DOCTYPE is refused (that alone stops XXE
and billion-laughs), and size and nesting depth are bounded before anything else runs.
"""
from __future__ import annotations

import re

from lxml import etree

from engine.errors import InvalidDefinition

_DOCTYPE = re.compile(rb"<!\s*DOCTYPE", re.IGNORECASE)
_ENTITY = re.compile(rb"<!\s*ENTITY", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


def parse(data: bytes, filename: str, *, max_bytes: int, max_depth: int) -> etree._Element:
    if len(data) > max_bytes:
        raise InvalidDefinition(
            "{filename} is {data_count} bytes; the limit is {max_bytes} bytes", file=filename,
            params={"filename": filename, "data_count": len(data), "max_bytes": max_bytes}
        )
    if _DOCTYPE.search(data) or _ENTITY.search(data):
        raise InvalidDefinition(
            "{filename} contains a DOCTYPE or ENTITY declaration; DTDs are not allowed in uploads",
            file=filename, params={"filename": filename},
        )
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        raise InvalidDefinition("{filename} is not well-formed XML: {msg}", file=filename, line=line,
                                params={"filename": filename, "msg": exc.msg}) from None
    docinfo = root.getroottree().docinfo
    doctype = docinfo.doctype  # type: ignore[union-attr]  # lxml-stubs lack DocInfo.doctype
    if doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise InvalidDefinition("{filename} declares a DTD; DTDs are not allowed in uploads", file=filename,
                                params={"filename": filename})
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > max_depth:
            raise InvalidDefinition(
                "{filename} nests elements deeper than {max_depth} levels", file=filename, line=_.sourceline,
                params={"filename": filename, "max_depth": max_depth}
            )
    return root
