/*
 * Diagrams without inline JavaScript. A page links
 *   <link rel="stylesheet" href="/static/vendor/diagram.css">
 *   <script src="/static/vendor/diagram.js" defer></script>
 *   <script src="/static/diagram-page.js" defer></script>
 * and marks where a diagram goes:
 *   <div class="bpmn-canvas" data-xml-url="/procedures/x/versions/1/xml"
 *        data-completed='["task_a"]' data-current='["task_b"]'></div>
 * Each such element gets SopflowDiagram.view() with the XML fetched from data-xml-url
 * (same origin, the session cookie goes along). When the diagram is shown the element
 * gets data-state="ready"; on failure data-state="error" and a short message inside it:
 * data-error-text (give it a translated string) followed by the HTTP status or error.
 */
(function () {
  'use strict';

  function ids(element, name) {
    var raw = element.getAttribute(name);
    if (!raw) return [];
    try {
      var parsed = JSON.parse(raw);
      return Array.isArray(parsed) ? parsed.map(String) : [];
    } catch (e) {
      return [];
    }
  }

  function fail(element, message) {
    element.setAttribute('data-state', 'error');
    element.textContent = message;
  }

  function show(element) {
    var url = element.getAttribute('data-xml-url');
    element.setAttribute('data-state', 'loading');
    fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/xml, text/xml' } })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text();
      })
      .then(function (xml) {
        return window.SopflowDiagram.view(element, xml, {
          completed: ids(element, 'data-completed'),
          current: ids(element, 'data-current'),
        });
      })
      .then(function () {
        element.setAttribute('data-state', 'ready');
      })
      .catch(function (error) {
        fail(element, (element.getAttribute('data-error-text') || 'The diagram could not be shown') +
          ' (' + (error && error.message ? error.message : error) + ')');
      });
  }

  function start() {
    var elements = document.querySelectorAll('.bpmn-canvas[data-xml-url]');
    if (!elements.length) return;
    if (!window.SopflowDiagram) {
      elements.forEach(function (element) {
        fail(element, 'The diagram viewer is missing (run make assets).');
      });
      return;
    }
    elements.forEach(show);
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
