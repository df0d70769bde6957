/**
 * window.SopflowDiagram: the three things sopflow's pages do with a BPMN diagram.
 *
 * Built by `make assets` (esbuild, web/frontend/build.mjs) into /static/vendor/diagram.js;
 * its stylesheet is /static/vendor/diagram.css (bpmn-js + diagram-js + bpmn-font + the
 * sopflow markers below). Every element passed in must have a height (the CSS gives
 * `.bpmn-canvas` one). Element ids are BPMN element ids (the engine's task spec names).
 *
 *   SopflowDiagram.view(element, xml, {completed: [ids], current: [ids]})
 *     -> Promise<NavigatedViewer>. Read-only viewer (pan + zoom), fitted to the element;
 *     `completed` ids get the class `sopflow-completed` (muted green), `current` ids
 *     `sopflow-current` (highlighted). Ids not in the diagram are ignored.
 *
 *   SopflowDiagram.edit(element, xml)
 *     -> Promise<Modeler>, resolved once the XML is imported. Camunda attributes
 *     (camunda:assignee, camunda:formData, ...) round-trip through
 *     `await modeler.saveXML({format: true})` -> {xml}.
 *
 *   SopflowDiagram.diff(elementA, elementB, xmlA, xmlB)
 *     -> Promise<{added, removed, changed, layoutChanged, viewers: [viewerA, viewerB]}>,
 *     each a list of element ids (bpmn-js-differ's semantic diff, Camunda attributes
 *     included). Marks: removed in A (`sopflow-diff-removed`), added in B
 *     (`sopflow-diff-added`), changed / layout-changed in both (`sopflow-diff-changed`,
 *     `sopflow-diff-layout-changed`). Panning or zooming one viewer moves the other.
 *
 * A rejected promise carries bpmn-js's import error (e.g. unparsable XML).
 */
import NavigatedViewer from 'bpmn-js/lib/NavigatedViewer';
import Modeler from 'bpmn-js/lib/Modeler';
import camundaModdle from 'camunda-bpmn-moddle/resources/camunda.json';
import { diff as semanticDiff } from 'bpmn-js-differ';

const moddleExtensions = { camunda: camundaModdle };

function mark(viewer, ids, marker) {
  const registry = viewer.get('elementRegistry');
  const canvas = viewer.get('canvas');
  for (const id of ids || []) {
    if (registry.get(id)) {
      canvas.addMarker(id, marker);
    }
  }
}

function fit(viewer) {
  viewer.get('canvas').zoom('fit-viewport', 'auto');
}

async function view(element, xml, options = {}) {
  const viewer = new NavigatedViewer({ container: element, moddleExtensions });
  await viewer.importXML(xml);
  mark(viewer, options.completed, 'sopflow-completed');
  mark(viewer, options.current, 'sopflow-current');
  fit(viewer);
  return viewer;
}

async function edit(element, xml) {
  const modeler = new Modeler({ container: element, moddleExtensions });
  await modeler.importXML(xml);
  fit(modeler);
  return modeler;
}

function syncViewboxes(a, b) {
  let syncing = false;
  const follow = (source, target) => {
    source.on('canvas.viewbox.changed', (event) => {
      if (syncing) return;
      syncing = true;
      try {
        target.get('canvas').viewbox(event.viewbox);
      } finally {
        syncing = false;
      }
    });
  };
  follow(a, b);
  follow(b, a);
}

async function diff(elementA, elementB, xmlA, xmlB) {
  const viewerA = new NavigatedViewer({ container: elementA, moddleExtensions });
  const viewerB = new NavigatedViewer({ container: elementB, moddleExtensions });
  await viewerA.importXML(xmlA);
  await viewerB.importXML(xmlB);
  const changes = semanticDiff(viewerA.getDefinitions(), viewerB.getDefinitions());
  const result = {
    added: Object.keys(changes._added),
    removed: Object.keys(changes._removed),
    changed: Object.keys(changes._changed),
    layoutChanged: Object.keys(changes._layoutChanged),
  };
  mark(viewerA, result.removed, 'sopflow-diff-removed');
  mark(viewerB, result.added, 'sopflow-diff-added');
  for (const viewer of [viewerA, viewerB]) {
    mark(viewer, result.changed, 'sopflow-diff-changed');
    mark(viewer, result.layoutChanged, 'sopflow-diff-layout-changed');
  }
  fit(viewerA);
  fit(viewerB);
  syncViewboxes(viewerA, viewerB);
  result.viewers = [viewerA, viewerB];
  return result;
}

window.SopflowDiagram = Object.freeze({ view, edit, diff });
