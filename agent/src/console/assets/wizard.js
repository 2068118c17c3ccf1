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
  function init() { show(1, false); }
  document.addEventListener('DOMContentLoaded', init);
  document.addEventListener('htmx:afterSwap', function (e) {
    if (e.detail.target && e.detail.target.id === 'editor') init();
  });
  if (document.readyState !== 'loading') init();
})();
