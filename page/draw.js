// Draw on the canvas; while drawing (at most every 150 ms) the canvas goes to POST /predict as a
// PNG and the answer is shown: the digit, ten bars, and the 28x28 image the network saw.
const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const digit = document.getElementById("digit");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
const statusLine = document.getElementById("status");

for (let d = 0; d < 10; d++) {
  bars.insertAdjacentHTML("beforeend",
    `<li><span>${d}</span><div class="track"><div class="bar"></div></div><span class="pct">0%</span></li>`);
}

function clear() {
  ink.fillStyle = "white";
  ink.fillRect(0, 0, pad.width, pad.height);
  digit.textContent = "?";
  seen.removeAttribute("src");
  show({ probabilities: new Array(10).fill(0) });
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

// One request at a time; changes made meanwhile are sent when it returns.
let timer = null;
let busy = false;
let again = false;
function soon() {
  clearTimeout(timer);
  timer = setTimeout(() => pad.toBlob(send, "image/png"), 150);
}
async function send(blob) {
  if (busy) { again = true; return; }
  busy = true;
  try {
    const response = await fetch("/predict", { method: "POST", body: blob, headers: { "Content-Type": blob.type } });
    const answer = await response.json();
    if (!response.ok) {
      say(answer.error, true);
    } else {
      digit.textContent = answer.digit;
      seen.src = answer.image;
      show(answer);
      say(answer.note ? `Read it (${answer.note}).` : "");
    }
  } catch (error) {
    say(`No answer from the server (${error.message}): is python draw.py still running?`, true);
  } finally {
    busy = false;
    if (again) { again = false; pad.toBlob(send, "image/png"); }
  }
}

// A photo, chosen or dropped, goes the same way.
document.getElementById("file").addEventListener("change", (event) => {
  if (event.target.files[0]) send(event.target.files[0]);
});
pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("dragging"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dragging"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dragging");
  if (event.dataTransfer.files[0]) send(event.dataTransfer.files[0]);
});
document.getElementById("clear").addEventListener("click", clear);
clear();
