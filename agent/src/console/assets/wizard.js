// The wizard's steps: show one step at a time; "Next", "Back" and the
// step list move between them. Without this script every step shows.
(function () {
  function show(n, focus) {
    var steps = document.querySelectorAll('#wizard fieldset.step');
    if (!steps.length) return;
    steps.forEach(function (f) { f.hidden = f.dataset.step !== String(n); });
    document.querySelectorAll('#wizard .step-link').forEach(function (b) {
      if (b.dataset.go === String(n)) b.setAttribute('aria-current', 'step');
      else b.removeAttribute('aria-current');
    });
    if (focus) {
      var first = document.querySelector('#step-' + n + ' input, #step-' + n + ' select, #step-' + n + ' textarea, #step-' + n + ' button');
      if (first) first.focus();
    }
  }
  document.addEventListener('click', function (e) {
    var go = e.target.closest && e.target.closest('#wizard [data-go]');
    if (go) { e.preventDefault(); show(go.dataset.go, true); }
  });
  // The trigger step shows the fields of the chosen trigger type; a field
  // of another type stays visible while it has a value, a finding or a
  // needs-input note.
  // Each trigger's fields follow that trigger's own type select.
  function relevant() {
    document.querySelectorAll('#wizard .field[data-for]').forEach(function (f) {
      var type = document.getElementById(f.dataset.typeField);
      if (!type) return;
      var c = f.querySelector('input, select, textarea');
      f.hidden = !(f.dataset.for.split(' ').indexOf(type.value) >= 0 ||
        (c && c.value.trim() !== '') || f.querySelector('.finding, .need-note'));
    });
  }
  document.addEventListener('change', function (e) {
    if (/^w-trigger_group-triggers-[0-9]+-type$/.test(e.target.id)) relevant();
  });
  document.addEventListener('htmx:oobAfterSwap', relevant);
  // After an Add or Remove the wizard is drawn again on the step it was
  // on, with the added item's first field focused.
  function init() {
    var form = document.getElementById('wizard');
    show(form && form.dataset.startStep ? form.dataset.startStep : 1, false);
    relevant();
    var focus = form && form.dataset.focus && document.getElementById(form.dataset.focus);
    if (focus) focus.focus();
  }
  document.addEventListener('DOMContentLoaded', init);
  document.addEventListener('htmx:afterSwap', function (e) {
    if (e.detail.target && e.detail.target.id === 'editor') init();
  });
  if (document.readyState !== 'loading') init();
})();
