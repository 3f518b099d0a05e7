// Copy buttons: <button data-copy="ID"> copies the value of the input with that id.
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  const status = button.parentElement.querySelector(".copy-status");
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch (error) {
    // No clipboard API (plain http, or permission refused): the selection fallback.
    input.select();
    copied = document.execCommand("copy");
  }
  button.textContent = copied ? "Copied" : "Copy";
  if (status) status.textContent = copied ? "Copied to the clipboard." : "Select the text and copy it.";
  if (!copied) {
    // Leave the secret selected for Ctrl+C. Once copied, the focus stays on the button, so a
    // keyboard user's next Tab goes on to the Done link.
    input.focus();
    input.select();
  }
});
