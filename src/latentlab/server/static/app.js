// The page: a form that submits a job, its progress streamed (server-sent events), the resulting grid with a
// button per action on each image, a painter for inpainting masks, and the history kept by the server.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;   // the running job's id
let painting = null;  // {grid, n, image} while the painter is open

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function post(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

async function loadChoices() {
  const {models, adapters, samplers} = await api("/api/models");
  $("model").replaceChildren(...models.map((m) => new Option(m, m)));
  $("sampler").replaceChildren(...samplers.map((s) => new Option(s, s, s === "ddim", s === "ddim")));
  $("adapters").hidden = adapters.length === 0;
  for (const name of adapters) {
    const row = document.createElement("label");
    row.className = "adapter";
    row.innerHTML = `<input type="checkbox"> <span></span> <input type="range" min="0" max="2" step="0.05" value="1">`;
    row.querySelector("span").textContent = name;
    row.dataset.name = name;
    $("adapters").append(row);
  }
}

function settings() {
  const seed = $("seed").value.trim();
  const adapters = [...$("adapters").querySelectorAll(".adapter")]
    .filter((row) => row.querySelector("input[type=checkbox]").checked)
    .map((row) => [row.dataset.name, Number(row.querySelector("input[type=range]").value)]);
  return {kind: "generate", prompt: $("prompt").value, negative_prompt: $("negative").value, model: $("model").value,
          sampler: $("sampler").value, steps: Number($("steps").value), guidance: Number($("guidance").value),
          seed: seed === "" || seed === "random" ? null : Number(seed), count: Number($("count").value),
          size: $("size").value ? Number($("size").value) : null, adapters};
}

async function submit(body) {
  showError(null);
  try {
    const job = await post("/api/jobs", body);
    follow(job.id);
  } catch (error) {
    showError(error.message);
  }
}

function follow(id) {
  current = id;
  $("cancel").disabled = false;
  $("progress").hidden = false;
  $("preview").removeAttribute("src");
  $("preview").hidden = true;
  const events = new EventSource(`/api/jobs/${id}/events`);
  events.onmessage = (message) => {
    const job = JSON.parse(message.data);
    if (job.state === "queued") $("status").textContent = `queued: ${job.position} ahead`;
    if (job.state === "running") {
      $("status").textContent = job.steps ? `step ${job.step} of ${job.steps}` : "starting";
      $("bar").value = job.steps ? job.step / job.steps : 0;
    }
    if (job.preview) {
      $("preview").src = job.preview;
      $("preview").hidden = false;
    }
    if (["done", "failed", "cancelled"].includes(job.state)) {
      events.close();
      current = null;
      $("cancel").disabled = true;
      $("status").textContent = job.state;
      $("bar").value = job.state === "done" ? 1 : 0;
      if (job.state === "failed") showError(job.error);
      if (job.state === "done") showGrid(job.result.id, job.result.images);
      loadHistory();
    }
  };
}

function showGrid(grid, files) {
  $("result").replaceChildren(...files.map((file, n) => card(grid, n, file)));
}

function card(grid, n, file) {
  const div = document.createElement("div");
  div.className = "card";
  div.innerHTML = `<img alt=""><div class="buttons"><button data-act="vary">V</button>` +
    `<button data-act="upscale">U</button><button data-act="img2img">img2img</button>` +
    `<button data-act="paint">Inpaint</button></div>`;
  div.querySelector("img").src = `/api/images/${grid}/${file}`;
  div.querySelector("img").title = file;
  div.dataset.grid = grid;
  div.dataset.n = n;
  div.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => act(b.dataset.act, grid, n, div)));
  return div;
}

function act(action, grid, n, div) {
  if (action === "paint") return openPainter(grid, n, div.querySelector("img").src);
  const body = {kind: action, grid, n};
  if (action === "img2img") body.prompt = $("prompt").value;
  submit(body);
}

function openPainter(grid, n, src) {
  painting = {grid, n};
  $("painter").hidden = false;
  const context = $("canvas").getContext("2d");
  const image = new Image();
  image.onload = () => {
    context.imageSmoothingEnabled = false;
    context.drawImage(image, 0, 0, 256, 256);
    painting.mask = document.createElement("canvas");
    painting.mask.width = painting.mask.height = 256;
    const mask = painting.mask.getContext("2d");
    mask.fillStyle = "black";
    mask.fillRect(0, 0, 256, 256);
  };
  image.src = src;
}

function paintAt(event) {
  if (!painting || !painting.mask || !(event.buttons & 1)) return;
  const box = $("canvas").getBoundingClientRect();
  const x = (event.clientX - box.left) * 256 / box.width, y = (event.clientY - box.top) * 256 / box.height;
  for (const [canvas, colour] of [[$("canvas"), "rgba(255,255,255,0.6)"], [painting.mask, "white"]]) {
    const context = canvas.getContext("2d");
    context.fillStyle = colour;
    context.beginPath();
    context.arc(x, y, 20, 0, 2 * Math.PI);
    context.fill();
  }
}

async function upload(file) {
  showError(null);
  try {
    const grid = await api("/api/uploads", {method: "POST", headers: {"Content-Type": file.type}, body: file});
    showGrid(grid.id, grid.images);
    loadHistory();
  } catch (error) {
    showError(error.message);
  }
}

async function loadHistory() {
  const {grids} = await api("/api/history");
  $("history").replaceChildren(...grids.map((grid) => {
    const row = document.createElement("div");
    row.className = "entry";
    const caption = document.createElement("span");
    const first = grid.images[0] || {};
    const origin = first.from ? ` (${first.from.action})` : "";
    caption.textContent = `${grid.id}: ${first.prompt || "(no prompt)"}${origin}, seed ${first.seed}`;
    row.append(caption);
    grid.images.forEach((image) => {
      const img = document.createElement("img");
      img.src = `/api/images/${grid.id}/${image.file}`;
      img.title = JSON.stringify(image.settings);
      img.addEventListener("click", () => { showGrid(grid.id, grid.images.map((i) => i.file)); recall(image); });
      row.append(img);
    });
    return row;
  }));
}

function recall(image) {
  // the form set as the image was drawn: Generate draws it again
  const s = image.settings || {};
  if (image.prompt) $("prompt").value = image.prompt;
  $("negative").value = s.negative_prompt || "";
  if (s.steps) $("steps").value = s.steps;
  if (s.guidance !== undefined && s.guidance !== null) $("guidance").value = s.guidance;
  if (s.sampler) $("sampler").value = s.sampler;
  $("seed").value = image.seed;
  $("count").value = 1;
}

$("form").addEventListener("submit", (event) => { event.preventDefault(); submit(settings()); });
$("cancel").addEventListener("click", () => current && post(`/api/jobs/${current}/cancel`, {}));
$("upload").addEventListener("change", () => $("upload").files[0] && upload($("upload").files[0]));
$("canvas").addEventListener("pointerdown", paintAt);
$("canvas").addEventListener("pointermove", paintAt);
$("clear").addEventListener("click", () => painting && openPainter(painting.grid, painting.n,
  document.querySelector(`.card[data-grid="${painting.grid}"][data-n="${painting.n}"] img`).src));
$("close").addEventListener("click", () => { $("painter").hidden = true; painting = null; });
$("inpaint").addEventListener("click", () => {
  if (!painting) return;
  submit({kind: "inpaint", grid: painting.grid, n: painting.n, prompt: $("prompt").value,
          mask: painting.mask.toDataURL("image/png")});
});
loadChoices().then(loadHistory).catch((error) => showError(error.message));
