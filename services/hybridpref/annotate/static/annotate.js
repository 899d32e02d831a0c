// Keyboard shortcuts of the annotation page: 1-5 pick a point of the scale, Enter saves (Shift+Enter
// is a new line in the rationale), S skips, U undoes the last label. A form is sent once: a second
// Enter while the first request is on its way does nothing (the server also stores one vote).
"use strict";
(function () {
  var sent = false;
  function submitOnce(form) {
    if (sent) { return; }
    if (form.reportValidity && !form.reportValidity()) { return; }
    sent = true;
    form.submit();
  }
  document.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
  });
  window.addEventListener("pageshow", function () { sent = false; });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) { return; }
    var form = document.getElementById("label-form");
    var target = event.target;
    var typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "radio"));
    if (event.key === "Enter" && !event.shiftKey && form && (!typing || target.tagName === "TEXTAREA")) {
      event.preventDefault();
      submitOnce(form);
      return;
    }
    if (typing) { return; }
    if (form && event.key >= "1" && event.key <= "5") {
      var radio = form.querySelector('input[name="choice"][data-key="' + event.key + '"]');
      if (radio) { radio.checked = true; radio.focus(); event.preventDefault(); }
    } else if (event.key === "s" || event.key === "S") {
      var skip = document.getElementById("skip-form");
      if (skip) { event.preventDefault(); submitOnce(skip); }
    } else if (event.key === "u" || event.key === "U") {
      var undo = document.getElementById("undo-form");
      if (undo) { event.preventDefault(); submitOnce(undo); }
    }
  });
})();
