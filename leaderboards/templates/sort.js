// robustad-bench leaderboard: sortable tables and a text filter, no dependencies (works from file://).
// Click a column header of a table.sortable to sort by it, best first (again to reverse); numbers sort by
// the cell's data-value, "n/a" last. Typing in an input.filter hides the rows of the tables its
// data-target selects that do not contain the text.
"use strict";

function sortKey(row, col) {
  const cell = row.cells[col];
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (raw === "" || raw === "n/a") return -Infinity;
  const number = Number(raw);
  return Number.isNaN(number) ? raw.toLowerCase() : number;
}

function sortBy(table, col, th) {
  const headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
  // the first click sorts the way the column is better (data-first: asc for an error), a second reverses
  const dir = th.dataset.dir ? (th.dataset.dir === "desc" ? "asc" : "desc") : (th.dataset.first || "desc");
  Array.from(headers).forEach((h) => delete h.dataset.dir);
  th.dataset.dir = dir;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = sortKey(a, col);
    const y = sortKey(b, col);
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return dir === "asc" ? order : -order;
  });
  rows.forEach((row) => body.appendChild(row));
}

document.querySelectorAll("table.sortable").forEach((table) => {
  const headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
  Array.from(headers).forEach((th, col) => {
    th.addEventListener("click", () => sortBy(table, col, th));
    th.title = (th.title ? th.title + " — " : "") + "click to sort";
  });
});

document.querySelectorAll("input.filter").forEach((input) => {
  input.addEventListener("input", () => {
    const needle = input.value.trim().toLowerCase();
    document.querySelectorAll(input.dataset.target).forEach((table) => {
      Array.from(table.tBodies[0].rows).forEach((row) => {
        row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
      });
    });
  });
});
