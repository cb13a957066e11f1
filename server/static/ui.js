// Archivist web UI: the little JavaScript it has. Everything works without it, except that
// the confirmation of a restore or a lifted hold falls back to no question asked ("Restore
// ticked" with nothing ticked, to the server's message on the page it goes back to), that the
// outcome of a form is not given the focus, and that a phone shows the search filters open
// above the results.
"use strict";

// The outcome of what was just done (restored, hold placed, signed out), shown on the page a
// form led to, takes the focus: a screen reader reads it first, where the page would start.
const outcome = document.querySelector("[data-flash]");
if (outcome) {
  outcome.focus();
}

// The search filters come before the results, on a phone too (so the keyboard meets them where
// they are shown): folded there, so the results stay near the top; open beside the results.
const narrow = window.matchMedia("(max-width: 760px)");
const fitFolds = () => {
  for (const fold of document.querySelectorAll("details[data-fold-narrow]")) {
    fold.open = !narrow.matches;
  }
};
fitFolds();
narrow.addEventListener("change", fitFolds);

document.addEventListener("submit", (event) => {
  const form = event.target;
  const button = event.submitter;
  // "Restore ticked" with nothing ticked: said here, the reason typed kept (the server says
  // the same without JavaScript, on the page it goes back to).
  const needsTick = button && button.getAttribute("data-needs-tick");
  if (needsTick && !document.querySelector(`input[name="ids"][form="${form.id}"]:checked`)) {
    event.preventDefault();
    const message = document.getElementById(needsTick);
    message.hidden = false;
    message.focus();
    return;
  }
  const question = (button && button.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  // Search and filter forms: leave empty fields out of the URL, so it stays short to share.
  if (form.hasAttribute("data-clean-get")) {
    for (const field of form.querySelectorAll("input, select")) {
      if (field.name && field.value === "" && !field.disabled) {
        field.disabled = true;
      }
    }
    // Re-enable after the browser has read the form (for back/forward navigation).
    window.setTimeout(() => {
      for (const field of form.querySelectorAll("input:disabled, select:disabled")) {
        field.disabled = false;
      }
    }, 0);
  }
});
