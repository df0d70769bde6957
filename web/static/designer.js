/*
 * The designer pages' script (no inline script: the CSP forbids it). Three parts, each
 * active only when its element is on the page:
 *   #drop-zone      (upload)  drag and drop files onto the form's file input; lists the chosen files
 *   #modeler        (edit)    bpmn-js modeler via SopflowDiagram.edit(); "Deploy as new version"
 *                             POSTs the XML (X-CSRF-Token) and goes to the new version, or lists
 *                             the refusal per element and marks the element in the diagram
 *   #diagram-diff   (diff)    SopflowDiagram.diff() of two versions; lists what changed
 * Translated texts come from data-*-text attributes of the page.
 */
(function () {
  'use strict';

  function text(element, name, values) {
    var value = element.getAttribute('data-' + name + '-text') || '';
    Object.keys(values || {}).forEach(function (k) {
      value = value.split('{' + k + '}').join(String(values[k]));
    });
    return value;
  }

  function fetchXml(url) {
    return fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/xml' } })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text();
      });
  }

  function fail(element, message, error) {
    element.setAttribute('data-state', 'error');
    element.textContent = message + (error ? ' (' + (error.message || error) + ')' : '');
  }

  // ---------------------------------------------------------------- upload

  function upload(zone) {
    var input = zone.querySelector('input[type=file]');
    var chosen = document.getElementById('chosen');
    function list() {
      var names = Array.prototype.map.call(input.files || [], function (f) { return f.name; });
      chosen.textContent = names.length ? zone.getAttribute('data-chosen-text') + ' ' + names.join(', ') : '';
    }
    input.addEventListener('change', list);
    list();  // files chosen before this deferred script ran (a slow load, or kept by the browser on back)
    ['dragenter', 'dragover'].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add('dragging');
      });
    });
    ['dragleave', 'drop'].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.remove('dragging');
      });
    });
    zone.addEventListener('drop', function (event) {
      if (event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        list();
      }
    });
  }

  // ---------------------------------------------------------------- modeler

  function edit(canvas) {
    var button = document.getElementById('deploy');
    var status = document.getElementById('edit-status');
    var errors = document.getElementById('edit-errors');
    var problems = document.getElementById('edit-problems');
    var modeler = null;
    var marked = [];

    status.textContent = text(canvas, 'loading');
    fetchXml(canvas.getAttribute('data-source-url'))
      .then(function (xml) { return window.SopflowDiagram.edit(canvas, xml); })
      .then(function (m) {
        modeler = m;
        canvas.sopflowModeler = m; // for tests and the browser console
        canvas.setAttribute('data-state', 'ready');
        status.textContent = text(canvas, 'ready');
        button.disabled = false;
      })
      .catch(function (error) {
        status.textContent = '';
        fail(canvas, text(canvas, 'error'), error);
      });

    function unmark() {
      var c = modeler.get('canvas');
      marked.forEach(function (id) { c.removeMarker(id, 'sopflow-error'); });
      marked = [];
    }

    function show(id) {
      var element = modeler.get('elementRegistry').get(id);
      if (!element) return;
      modeler.get('selection').select(element);
      if (element.waypoints === undefined) modeler.get('canvas').scrollToElement(element);
      canvas.focus && canvas.focus();
    }

    function refused(list) {
      problems.textContent = '';
      list.forEach(function (p) {
        var item = document.createElement('li');
        item.className = 'problem';
        if (p.element_id) {
          item.setAttribute('data-element', p.element_id);
          var where = document.createElement('span');
          where.className = 'where';
          where.textContent = text(canvas, 'element') + ' ' + p.element_id;
          item.appendChild(where);
        }
        if (p.line) {
          var line = document.createElement('span');
          line.className = 'where';
          line.textContent = text(canvas, 'line', { line: p.line });
          item.appendChild(line);
        }
        var message = document.createElement('span');
        message.className = 'error';
        message.textContent = p.message;
        item.appendChild(message);
        if (p.element_id && modeler.get('elementRegistry').get(p.element_id)) {
          modeler.get('canvas').addMarker(p.element_id, 'sopflow-error');
          marked.push(p.element_id);
          var go = document.createElement('button');
          go.type = 'button';
          go.textContent = text(canvas, 'show');
          go.addEventListener('click', function () { show(p.element_id); });
          item.appendChild(go);
        }
        problems.appendChild(item);
      });
      errors.hidden = false;
      errors.focus && errors.focus();
    }

    button.addEventListener('click', function () {
      if (!modeler) return;
      button.disabled = true;
      errors.hidden = true;
      unmark();
      status.textContent = text(canvas, 'deploying');
      modeler.saveXML({ format: true })
        .then(function (saved) {
          return fetch(canvas.getAttribute('data-deploy-url'), {
            method: 'POST', credentials: 'same-origin', body: saved.xml,
            headers: { 'Content-Type': 'application/xml', 'X-CSRF-Token': canvas.getAttribute('data-csrf'),
                       Accept: 'application/json' },
          });
        })
        .then(function (response) {
          var type = response.headers.get('content-type') || '';
          if (type.indexOf('application/json') !== 0) throw new Error('HTTP ' + response.status);
          return response.json().then(function (body) { return { status: response.status, body: body }; });
        })
        .then(function (answer) {
          if (answer.status === 201) {
            window.location.assign(answer.body.url);
            return;
          }
          button.disabled = false;
          if (answer.status === 200) {
            status.textContent = text(canvas, 'unchanged', { version: answer.body.version });
          } else if (answer.status === 422) {
            status.textContent = '';
            refused(answer.body.errors || []);
          } else {
            throw new Error('HTTP ' + answer.status);
          }
        })
        .catch(function (error) {
          button.disabled = false;
          status.textContent = text(canvas, 'failed') + ' (' + (error.message || error) + ')';
        });
    });
  }

  // ---------------------------------------------------------------- diff

  function diff(box) {
    var from = document.getElementById('diff-from');
    var to = document.getElementById('diff-to');
    var summary = document.getElementById('diff-summary');
    Promise.all([fetchXml(box.getAttribute('data-from-url')), fetchXml(box.getAttribute('data-to-url'))])
      .then(function (xml) { return window.SopflowDiagram.diff(from, to, xml[0], xml[1]); })
      .then(function (result) {
        var registries = result.viewers.map(function (v) { return v.get('elementRegistry'); });
        function label(id) {
          var element = registries[1].get(id) || registries[0].get(id);
          var name = element && element.businessObject && element.businessObject.name;
          return name ? name + ' (' + id + ')' : id;
        }
        var groups = [['added', result.added], ['removed', result.removed], ['changed', result.changed],
                      ['layout', result.layoutChanged]];
        var list = document.createElement('dl');
        var any = false;
        groups.forEach(function (group) {
          summary.setAttribute('data-' + group[0], JSON.stringify(group[1]));
          if (!group[1].length) return;
          any = true;
          var dt = document.createElement('dt');
          dt.textContent = text(summary, group[0]);
          var dd = document.createElement('dd');
          dd.textContent = group[1].map(label).join(', ');
          list.appendChild(dt);
          list.appendChild(dd);
        });
        summary.textContent = '';
        if (any) {
          summary.appendChild(list);
        } else {
          summary.textContent = text(summary, 'none');
        }
        box.setAttribute('data-state', 'ready');
      })
      .catch(function (error) {
        fail(from, text(box, 'error'), error);
        box.setAttribute('data-state', 'error');
      });
  }

  function start() {
    var zone = document.getElementById('drop-zone');
    if (zone) upload(zone);
    var needsDiagram = document.getElementById('modeler') || document.getElementById('diagram-diff');
    if (needsDiagram && !window.SopflowDiagram) {
      fail(needsDiagram, (needsDiagram.getAttribute('data-error-text') || '') + ' (SopflowDiagram)');
      return;
    }
    if (document.getElementById('modeler')) edit(document.getElementById('modeler'));
    if (document.getElementById('diagram-diff')) diff(document.getElementById('diagram-diff'));
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
