// The portal's progressive enhancement: every page works without it.
(function () {
  "use strict";
  // filters apply as they change
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.addEventListener("change", function () { form.requestSubmit ? form.requestSubmit() : form.submit(); });
  });
  // the lightbox: a photo opens large, zooms with the buttons, the wheel or + / -, closes with Escape
  var dialog = document.getElementById("lightbox");
  if (dialog && dialog.showModal) {
    var image = document.getElementById("lightbox-image");
    var original = dialog.querySelector("[data-original-link]");
    var scale = 1;
    var zoom = function (factor) {
      scale = Math.min(8, Math.max(0.25, scale * factor));
      image.style.transform = "scale(" + scale + ")";
    };
    document.querySelectorAll("a[data-lightbox]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        scale = 1;
        image.style.transform = "";
        image.src = link.getAttribute("data-lightbox");
        image.alt = (link.querySelector("img") || {}).alt || "Photo";
        original.href = link.getAttribute("data-original");
        dialog.showModal();
      });
    });
    dialog.querySelectorAll("[data-zoom]").forEach(function (button) {
      button.addEventListener("click", function () { zoom(parseFloat(button.getAttribute("data-zoom"))); });
    });
    dialog.addEventListener("wheel", function (event) { event.preventDefault(); zoom(event.deltaY < 0 ? 1.1 : 0.9); },
                            { passive: false });
    dialog.addEventListener("keydown", function (event) {
      if (event.key === "+" || event.key === "=") { zoom(1.25); }
      if (event.key === "-") { zoom(0.8); }
    });
  }
  // drag and drop onto the upload form
  document.querySelectorAll("form[data-dropzone]").forEach(function (form) {
    var zone = form.querySelector(".dropzone");
    var input = form.querySelector("input[type=file]");
    if (!zone || !input) { return; }
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        var details = form.closest("details");
        if (details) { details.open = true; }
      }
    });
  });
})();
