// The radiologist's page: the reading worklist with filters, claim / release, a link to
// the study in the viewer, and the report editor. Plain DOM code over the REST API
// (/api/reading-worklist, /api/reports); see docs/reading.md.
"use strict";

const api = "/api/reading-worklist";
const $ = (selector) => document.querySelector(selector);
let current = null; // study UID open in the editor
let latestLoad = 0; // loads overlap (filter change, then an action): only the newest may draw
let drawn = ""; // what the table shows, to redraw only on a change

function me() {
  return $("#me").value.trim();
}

function say(text) {
  $("#status").textContent = text;
}

async function call(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

function button(label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", action);
  return b;
}

function query() {
  const form = new FormData($("#filters"));
  const params = new URLSearchParams();
  for (const key of ["state", "modality", "priority", "date_from", "date_to"]) {
    if (form.get(key)) params.set(key, form.get(key));
  }
  if (form.get("mine") && me()) params.set("assigned_to", me());
  return params.toString();
}

function priorityCell(row, item) {
  const td = row.insertCell();
  const badge = document.createElement("span");
  badge.className = `p${item.priority}`;
  badge.textContent = item.priority_label;
  td.append(badge);
  if (item.priority_reason) {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = item.priority_reason;
    td.append(reason);
  }
}

function actionsCell(row, item) {
  const td = row.insertCell();
  const mine = item.assigned_to && item.assigned_to === me();
  if (item.state === "unread") td.append(button("Claim", () => act("claim", item.study_uid)));
  if (item.state === "claimed" && mine) td.append(button("Release", () => act("release", item.study_uid)));
  if (mine || item.state === "final" || item.state === "amended") {
    td.append(button("Report", () => openEditor(item)));
  }
  const viewer = document.createElement("a");
  viewer.href = `/viewer/viewer?StudyInstanceUIDs=${encodeURIComponent(item.study_uid)}`;
  viewer.target = "_blank";
  viewer.rel = "noopener";
  viewer.textContent = "Open in viewer";
  td.append(viewer);
}

async function load() {
  const ticket = ++latestLoad;
  try {
    const data = await call("GET", `${api}?${query()}`);
    if (ticket !== latestLoad) return; // a later load was started: its answer is fresher
    // Redrawing replaces every button: a click whose press and release straddle a redraw
    // is lost, so the periodic refresh redraws only when the list (or the user) changed.
    const snapshot = JSON.stringify([me(), data]);
    if (snapshot === drawn) return;
    drawn = snapshot;
    const body = $("#worklist tbody");
    body.dataset.radiologist = me();
    body.replaceChildren();
    for (const item of data.items) {
      const row = body.insertRow();
      row.dataset.study = item.study_uid;
      priorityCell(row, item);
      cell(row, item.patient_name.replaceAll("^", " "));
      cell(row, item.study_date);
      cell(row, item.modalities.join(", "));
      cell(row, item.study_description);
      cell(row, item.state).className = "state";
      cell(row, item.assigned_to);
      actionsCell(row, item);
    }
    $("#count").textContent = `${data.total} ${data.total === 1 ? "study" : "studies"}`;
  } catch (error) {
    say(`Could not load the worklist: ${error.message}`);
  }
}

async function act(what, study) {
  if (!me()) return say("Enter your name first.");
  try {
    await call("POST", `${api}/${encodeURIComponent(study)}/${what}`, { radiologist: me() });
    say(what === "claim" ? "Study claimed." : "Study released.");
  } catch (error) {
    say(`Could not ${what}: ${error.message}`);
  }
  load();
}

async function showVersions(fill) {
  const data = await call("GET", `/api/reports/${encodeURIComponent(current)}`);
  const list = $("#versions");
  list.replaceChildren();
  for (const v of data.versions) {
    const li = document.createElement("li");
    li.textContent = `v${v.version} ${v.status} by ${v.author}: ${v.impression}`;
    list.append(li);
  }
  if (!fill) return;
  const draft = data.versions.find((v) => v.status === "draft" && v.author === me());
  const last = draft || data.versions[data.versions.length - 1];
  $("#findings").value = last ? last.findings : "";
  $("#impression").value = last ? last.impression : "";
}

function editable(on) {
  for (const field of $("#report").elements) field.disabled = !on;
}

async function openEditor(item) {
  current = item.study_uid;
  editable(false); // until the last version is loaded into the fields
  $("#editor").hidden = false;
  $("#editor-study").textContent =
    `${item.patient_name.replaceAll("^", " ")}, ${item.study_date}, ${item.study_description}`;
  try {
    await showVersions(true);
  } catch (error) {
    say(error.message);
  }
  editable(true);
  $("#findings").focus();
}

function reportBody() {
  const form = new FormData($("#report"));
  const body = { radiologist: me(), findings: form.get("findings"), impression: form.get("impression") };
  if (form.get("code_value")) {
    body.codes = [{ system: form.get("code_system"), code: form.get("code_value"),
                    display: form.get("code_display") || form.get("code_value") }];
  }
  return body;
}

async function save(andSign) {
  if (!me()) return say("Enter your name first.");
  try {
    await call("PUT", `/api/reports/${encodeURIComponent(current)}/draft`, reportBody());
    if (andSign) {
      const signed = await call("POST", `/api/reports/${encodeURIComponent(current)}/sign`, { radiologist: me() });
      say(`Report signed (${signed.status}, version ${signed.version}).`);
    } else {
      say("Draft saved.");
    }
    await showVersions(false);
  } catch (error) {
    say(`Could not save: ${error.message}`);
  }
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#me").value = localStorage.getItem("radiologist") || "";
  $("#me").addEventListener("change", () => {
    localStorage.setItem("radiologist", me());
    load();
  });
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  $("#save").addEventListener("click", () => save(false));
  $("#sign").addEventListener("click", () => save(true));
  $("#close").addEventListener("click", () => { $("#editor").hidden = true; current = null; });
  load();
  setInterval(load, 15000); // new studies and other radiologists' claims appear by themselves
});
