// paygate's pages: small enhancements over server-rendered HTML. Everything works without this file, only less
// smoothly (no live updates, tabs by reloading). No inline script anywhere: the Content-Security-Policy forbids it.
"use strict";

(function () {
  function enhance(root) {
    root.querySelectorAll("[role=tablist]").forEach(setUpTabs);
    root.querySelectorAll("form[data-card-form]").forEach(setUpCardForm);
    root.querySelectorAll("[data-countdown-s]").forEach(setUpCountdown);
    root.querySelectorAll("[data-redirect-after-ms]").forEach(function (link) {
      var delay = parseInt(link.getAttribute("data-redirect-after-ms"), 10);
      if (delay > 0) {
        window.setTimeout(function () { window.location.assign(link.href); }, delay);
      }
    });
    root.querySelectorAll("a[data-continue]").forEach(function (link) {
      window.setTimeout(function () { window.location.assign(link.href); }, 800);
    });
    root.querySelectorAll("form[data-once]").forEach(function (form) {
      form.addEventListener("submit", function () { disableSubmit(form); });
    });
  }

  // Tabs (WAI-ARIA): click or arrow keys switch panels without a reload.
  function setUpTabs(list) {
    var tabs = Array.prototype.slice.call(list.querySelectorAll("[role=tab]"));
    function select(tab, focus) {
      tabs.forEach(function (other) {
        var chosen = other === tab;
        other.setAttribute("aria-selected", chosen ? "true" : "false");
        other.tabIndex = chosen ? 0 : -1;
        var panel = document.getElementById(other.getAttribute("aria-controls"));
        if (panel) { panel.hidden = !chosen; }
      });
      if (focus) { tab.focus(); }
    }
    tabs.forEach(function (tab, index) {
      tab.addEventListener("click", function (event) { event.preventDefault(); select(tab, false); });
      tab.addEventListener("keydown", function (event) {
        var next = null;
        if (event.key === "ArrowRight") { next = tabs[(index + 1) % tabs.length]; }
        if (event.key === "ArrowLeft") { next = tabs[(index - 1 + tabs.length) % tabs.length]; }
        if (event.key === "Home") { next = tabs[0]; }
        if (event.key === "End") { next = tabs[tabs.length - 1]; }
        if (event.key === " " || event.key === "Enter") { event.preventDefault(); select(tab, true); return; }
        if (next) { event.preventDefault(); select(next, true); }
      });
    });
  }

  // Card checks before sending: the server decides, these only save a round trip.
  function luhnValid(digits) {
    if (!/^[0-9]{12,19}$/.test(digits)) { return false; }
    var total = 0;
    for (var i = 0; i < digits.length; i++) {
      var digit = parseInt(digits.charAt(digits.length - 1 - i), 10);
      if (i % 2 === 1) { digit = digit * 2 > 9 ? digit * 2 - 9 : digit * 2; }
      total += digit;
    }
    return total % 10 === 0;
  }

  function expiryProblem(text) {
    var match = /^\s*([0-9]{1,2})\s*\/\s*([0-9]{2}|[0-9]{4})\s*$/.exec(text);
    if (!match || +match[1] < 1 || +match[1] > 12) { return "Enter the expiry date as MM/YY."; }
    var year = 2000 + (+match[2] % 100), month = +match[1], now = new Date();
    if (year < now.getFullYear() || (year === now.getFullYear() && month < now.getMonth() + 1)) {
      return "Your card has expired.";
    }
    return "";
  }

  function setUpCardForm(form) {
    var number = form.querySelector("[name=number]");
    number.addEventListener("input", function () {
      // Groups of four as the shopper types; the server takes the digits either way.
      var digits = number.value.replace(/[^0-9]/g, "").slice(0, 19);
      var grouped = digits.replace(/(.{4})/g, "$1 ").trim();
      if (grouped !== number.value) { number.value = grouped; }
    });
    var expiry = form.querySelector("[name=expiry]");
    expiry.addEventListener("input", function () {
      // "1234" becomes "12/34", as the label asks; a slash typed by the shopper stays.
      if (/^[0-9]{3,4}$/.test(expiry.value)) { expiry.value = expiry.value.slice(0, 2) + "/" + expiry.value.slice(2); }
    });
    form.addEventListener("submit", function (event) {
      var problems = [
        [number, luhnValid(number.value.replace(/[\s-]/g, "")) ? "" : "Your card number is incorrect."],
        [expiry, expiryProblem(expiry.value)],
        [form.querySelector("[name=cvc]"),
         /^[0-9]{3,4}$/.test(form.querySelector("[name=cvc]").value.trim()) ? "" : "Enter the 3 or 4 digits of your card's CVC."]
      ];
      var first = null;
      problems.forEach(function (pair) {
        var field = pair[0], problem = pair[1];
        var note = document.getElementById(field.getAttribute("aria-describedby"));
        field.setAttribute("aria-invalid", problem ? "true" : "false");
        if (note) { note.textContent = problem; note.hidden = !problem; }
        if (problem && !first) { first = field; }
      });
      if (first) {
        event.preventDefault();
        first.focus();
        return;
      }
      disableSubmit(form);
    });
  }

  function disableSubmit(form) {
    // Sent once: the button waits for the answer (the server also pays a form sent twice once).
    var button = form.querySelector("button[type=submit]");
    if (button) {
      window.setTimeout(function () { button.disabled = true; }, 0);
    }
  }

  function setUpCountdown(element) {
    var endsAt = Date.now() + 1000 * parseInt(element.getAttribute("data-countdown-s"), 10);
    function show() {
      if (!element.isConnected) { window.clearInterval(timer); return; }
      var left = Math.max(0, Math.round((endsAt - Date.now()) / 1000));
      element.textContent = Math.floor(left / 60) + ":" + ("0" + (left % 60)).slice(-2);
      if (left === 0) { window.clearInterval(timer); element.textContent = "0:00 (expired)"; }
    }
    var timer = window.setInterval(show, 1000);
  }

  // Live regions: the server sends the region's new HTML (rendered and escaped by the server) when what it shows
  // changes. What a person typed into the region's forms stays typed: the same field of the same form gets it back.
  function followLive(region) {
    if (!window.EventSource) { return; }
    var source = new EventSource(region.getAttribute("data-live-url"));
    source.addEventListener("status", function (event) {
      var typed = typedValues(region);
      region.innerHTML = event.data;
      typedInputs(region).forEach(function (input) {
        var key = fieldKey(input);
        if (Object.prototype.hasOwnProperty.call(typed, key)) { input.value = typed[key]; }
      });
      enhance(region);
    });
  }

  function typedInputs(region) {
    return Array.prototype.slice.call(region.querySelectorAll("form input:not([type=hidden]), form textarea"));
  }

  function fieldKey(input) {
    return (input.form ? input.form.getAttribute("action") : "") + " " + input.name;
  }

  function typedValues(region) {
    var typed = {};
    typedInputs(region).forEach(function (input) {
      if (input.name && input.value) { typed[fieldKey(input)] = input.value; }
    });
    return typed;
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    document.querySelectorAll("[data-live-url]").forEach(followLive);
  });
})();
