// Draw on the canvas; while drawing (at most every 150 ms) the canvas goes to POST /predict as a
// PNG and the answer is shown: the digit, ten bars, the 28x28 image the network saw, and why: which
// of its pixels pushed toward the answer (red) and which toward the runner-up (blue).
const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const digit = document.getElementById("digit");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
const statusLine = document.getElementById("status");
const why = document.getElementById("why").getContext("2d");
const whyLegend = document.getElementById("why-legend");

for (let d = 0; d < 10; d++) {
  bars.insertAdjacentHTML("beforeend",
    `<li><span>${d}</span><div class="track"><div class="bar"></div></div><span class="pct">0%</span></li>`);
}

function clear() {
  clearTimeout(timer);
  newest++;  // an answer still on its way is for what was cleared
  waiting = null;
  ink.fillStyle = "white";
  ink.fillRect(0, 0, pad.width, pad.height);
  digit.textContent = "?";
  seen.removeAttribute("src");
  show({ probabilities: new Array(10).fill(0) });
  explain(null);
  say("Draw a digit.");
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function show(answer) {
  const top = Math.max(...answer.probabilities);
  [...bars.children].forEach((li, d) => {
    const p = answer.probabilities[d];
    li.querySelector(".bar").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
    li.classList.toggle("top", p === top && p > 0);
  });
}

// Each pixel's evidence on one colour scale centred at zero: white moved nothing, full red (or blue) is
// the pixel that pushed most toward the answer (or the runner-up).
function explain(answer) {
  const pixels = why.createImageData(28, 28);
  const evidence = answer ? answer.evidence.flat() : new Array(784).fill(0);
  const scale = Math.max(...evidence.map(Math.abs)) || 1;
  evidence.forEach((value, i) => {
    const fade = Math.round(255 * (1 - Math.abs(value) / scale));  // the other two channels, toward white
    pixels.data.set(value > 0 ? [255, fade, fade, 255] : [fade, fade, 255, 255], 4 * i);
  });
  why.putImageData(pixels, 0, 0);
  whyLegend.textContent = answer ? `red pushed toward ${answer.digit}, blue toward ${answer.runner_up}`
    : "why this answer";
}

// Dark ink on white, like pen on paper; the server turns it into MNIST's light-on-black.
let drawing = false;
let last = null;
function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}
pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  last = point(event);
  pad.setPointerCapture(event.pointerId);
  stroke(last);
});
pad.addEventListener("pointermove", (event) => {
  if (drawing) stroke(point(event));
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { drawing = false; last = null; });
}
function stroke(to) {
  ink.strokeStyle = "black";
  ink.lineWidth = 16;  // a sixteenth of the canvas: MNIST-like strokes once the digit is 20 pixels tall
  ink.lineCap = ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(...(last || to));
  ink.lineTo(...to);
  ink.stroke();
  last = to;
  soon();
}

// One request at a time. Every input (a stroke, a photo, Clear) gets the next number; an answer is
// shown only if it is for the newest one, and what came while a request was out is sent when it returns.
let timer = null;
let newest = 0;      // the number of the newest input
let waiting = null;  // { number, blob: () => Promise<Blob> } of the newest input not yet sent
let sending = false;
function soon() {
  clearTimeout(timer);
  timer = setTimeout(() => submit(() => new Promise((done) => pad.toBlob(done, "image/png"))), 150);
}
function submit(blob) {
  waiting = { number: ++newest, blob };
  if (!sending) sendAll();
}
async function sendAll() {
  sending = true;
  while (waiting) {
    const { number, blob } = waiting;
    waiting = null;
    const body = await blob();
    if (body.size > MAX_BYTES) {  // not sent: the server would refuse it unread
      if (number === newest) say(TOO_LARGE, true);
      continue;
    }
    try {
      const response = await fetch("/predict", { method: "POST", body, headers: { "Content-Type": body.type } });
      const answer = readAnswer(response, await response.text());
      if (number !== newest) continue;  // a newer input came meanwhile: its answer is the one to show
      if (!response.ok) {
        say(answer.error, true);
      } else {
        digit.textContent = answer.digit;
        seen.src = answer.image;
        show(answer);
        explain(answer);
        say(answer.note ? `Read it (${answer.note}).` : "");
      }
    } catch (error) {
      if (number === newest) say(`No answer from the server (${error.message}): is python draw.py still running?`, true);
    }
  }
  sending = false;
}

// Every answer is one to show: the server's own refusals (waitress's 400, 413 and 431) are plain text.
const MAX_BYTES = 4 * 1024 * 1024;  // draw.MAX_BODY
const TOO_LARGE = "This image is more than 4 MB: choose a smaller one, or scale it down first.";
function readAnswer(response, text) {
  try {
    const answer = JSON.parse(text);
    if (answer && typeof answer === "object") return answer;
  } catch (notJson) { /* one of the server's own refusals */ }
  if (response.status === 413) return { error: TOO_LARGE };
  if (response.status === 431) {
    return { error: "The browser sent more than 64 KB of headers (cookies for this address?): clear them and reload." };
  }
  const first = text.split("\n")[0].trim().slice(0, 200);
  return { error: `The server answered ${response.status}${first ? ": " + first : ""}.` };
}

// A photo, chosen or dropped, goes the same way.
document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) submit(() => Promise.resolve(file));
});
pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("dragging"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dragging"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dragging");
  const file = event.dataTransfer.files[0];
  if (file) submit(() => Promise.resolve(file));
});
document.getElementById("clear").addEventListener("click", clear);
clear();
