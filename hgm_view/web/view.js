// `hgm view`'s page: the avatar as Gaussian splats (Spark on three.js), fed over the WebSocket /ws.
// Messages are decoded as hgm_view/avatar.py writes them. URL options: hud=0 hides the text,
// skeleton=0 hides the bones, bg=RRGGBB sets the background, dpr=N the pixel ratio.
// `window.hgmView` lets tests and scripts set the camera and background and read what is shown.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

const SH_C0 = 0.28209479177387814; // f_dc = (rgb - 0.5) / SH_C0 (docs/architecture.md §3)
const ROW = 14;                     // raw row: x y z f_dc_0..2 opacity scale_0..2 rot_0..3 (w first)
const DEFAULT_FOV_DEG = 55;         // across the longer side, as the node's default intrinsics
const params = new URLSearchParams(location.search);

const hud = document.getElementById("hud");
if (params.get("hud") === "0") hud.classList.add("hidden");

const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
renderer.setPixelRatio(Number(params.get("dpr") || window.devicePixelRatio || 1));
renderer.setSize(window.innerWidth, window.innerHeight);
renderer.setClearColor(new THREE.Color("#" + (params.get("bg") || "202124")));
document.body.appendChild(renderer.domElement);

const scene = new THREE.Scene();
// preBlurAmount 0.3: the same 2D dilation as hgm's rasterizer (eps2d), so both draw the same splats.
const spark = new SparkRenderer({ renderer, preBlurAmount: 0.3 });
scene.add(spark);

// Avatars arrive in the camera's optical frame (x right, y down, z forward); three.js cameras look
// down -z with y up. Turning the whole avatar by 180° about x maps one onto the other, so the
// source camera is three's default camera at the origin.
const world = new THREE.Group();
world.rotation.x = Math.PI;
scene.add(world);

const camera = new THREE.PerspectiveCamera(DEFAULT_FOV_DEG, 1, 0.01, 100);
let intrinsics = null; // {K, width, height} of the source camera, when known
camera.updateProjectionMatrix = () => applyIntrinsics();
const controls = new OrbitControls(camera, renderer.domElement);
controls.enableDamping = true;

const skeletonMaterial = new THREE.LineBasicMaterial({ color: 0x3ddc84, depthTest: false, transparent: true });
const jointMaterial = new THREE.PointsMaterial({ color: 0xff5a5a, size: 6, sizeAttenuation: false, depthTest: false, transparent: true });
const skeleton = new THREE.Group();
skeleton.renderOrder = 10; // drawn over the splats: an overlay
skeleton.visible = params.get("skeleton") !== "0";
world.add(skeleton);

const state = { seq: 0, splats: 0, updates: 0, source: "", stamp: 0, heightM: 0, bytes: 0, fps: 0, frames: 0,
                connected: false, shown: 0, updateMs: 0, meshes: 0 };
let mesh = null;
let framed = false;

// Perspective projection from pinhole intrinsics (principal point included), the source image
// fitted into the viewport; without intrinsics, DEFAULT_FOV_DEG across the longer side.
function applyIntrinsics() {
  const vw = renderer.domElement.clientWidth || window.innerWidth, vh = renderer.domElement.clientHeight || window.innerHeight;
  let fx, fy, cx, cy;
  if (intrinsics) {
    const { K, width, height } = intrinsics;
    const s = Math.min(vw / width, vh / height);
    fx = K[0][0] * s; fy = K[1][1] * s;
    cx = K[0][2] * s + (vw - width * s) / 2; cy = K[1][2] * s + (vh - height * s) / 2;
  } else {
    fx = fy = 0.5 * Math.max(vw, vh) / Math.tan((DEFAULT_FOV_DEG * Math.PI) / 360);
    cx = vw / 2; cy = vh / 2;
  }
  const n = camera.near, f = camera.far;
  camera.aspect = vw / vh;
  camera.fov = (2 * Math.atan(vh / (2 * fy)) * 180) / Math.PI;
  camera.projectionMatrix.set(
    (2 * fx) / vw, 0, 1 - (2 * cx) / vw, 0,
    0, (2 * fy) / vh, (2 * cy) / vh - 1, 0,
    0, 0, -(f + n) / (f - n), (-2 * f * n) / (f - n),
    0, 0, -1, 0);
  camera.projectionMatrixInverse.copy(camera.projectionMatrix).invert();
}

function resize() {
  renderer.setSize(window.innerWidth, window.innerHeight);
  applyIntrinsics();
}
window.addEventListener("resize", resize);

// Back to the source camera (identity pose), orbiting about the avatar's centre on the optical axis.
function resetView(depth) {
  camera.position.set(0, 0, 0);
  camera.quaternion.identity();
  controls.target.set(0, 0, -Math.max(depth, 0.1));
  controls.update();
  applyIntrinsics();
}

function decode(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== "HGV1") throw new Error("not an hgm view message");
  const length = view.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, length)));
  let offset = 8 + length;
  const take = (count) => { const a = new Float32Array(buffer, offset, count); offset += count * 4; return a; };
  return { header, raw: take(header.n * ROW), segments: take(header.segments * 6), joints: take(header.joints * 3) };
}

// Activate raw row i and hand it to `put(center, scales, quaternion, opacity, color)` (Spark's
// pushSplat / setSplat signature); the vectors are reused between calls.
function forEachSplat(raw, n, put) {
  const c = new THREE.Vector3(), s = new THREE.Vector3(), q = new THREE.Quaternion(), color = new THREE.Color();
  for (let i = 0; i < n; i++) {
    const o = i * ROW;
    c.set(raw[o], raw[o + 1], raw[o + 2]);
    color.setRGB(0.5 + SH_C0 * raw[o + 3], 0.5 + SH_C0 * raw[o + 4], 0.5 + SH_C0 * raw[o + 5]);
    s.set(Math.exp(raw[o + 7]), Math.exp(raw[o + 8]), Math.exp(raw[o + 9]));
    q.set(raw[o + 11], raw[o + 12], raw[o + 13], raw[o + 10]).normalize();
    put(i, c, s, q, 1 / (1 + Math.exp(-raw[o + 6])), color);
  }
}

// A new mesh for a new avatar; an avatar with as many splats as the one shown (live mode re-poses
// the same avatar every frame) is written into the existing buffers instead.
async function updateMesh(raw, n) {
  const packed = mesh && mesh.packedSplats;
  if (packed && packed.numSplats === n) {
    forEachSplat(raw, n, (i, c, s, q, o, color) => packed.setSplat(i, c, s, q, o, color));
    packed.needsUpdate = true;
    mesh.updateVersion();
    return;
  }
  const next = new SplatMesh({
    constructSplats: (splats) => forEachSplat(raw, n, (i, c, s, q, o, color) => splats.pushSplat(c, s, q, o, color)),
  });
  await next.initialized;
  state.meshes += 1;
  world.add(next);
  if (mesh) { world.remove(mesh); mesh.dispose(); }
  mesh = next;
}

function setSkeleton(segments, joints) {
  for (const child of [...skeleton.children]) { child.geometry.dispose(); skeleton.remove(child); }
  if (segments.length) {
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(new Float32Array(segments), 3));
    skeleton.add(Object.assign(new THREE.LineSegments(g, skeletonMaterial), { renderOrder: 10 }));
  }
  if (joints.length) {
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(new Float32Array(joints), 3));
    skeleton.add(Object.assign(new THREE.Points(g, jointMaterial), { renderOrder: 11 }));
  }
}

// Height (extent along the camera's y) and median depth of the splat centres.
function measure(raw, n) {
  if (!n) return { height: 0, depth: 1 };
  let lo = Infinity, hi = -Infinity;
  const depths = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const y = raw[i * ROW + 1];
    lo = Math.min(lo, y); hi = Math.max(hi, y);
    depths[i] = raw[i * ROW + 2];
  }
  depths.sort();
  return { height: hi - lo, depth: depths[n >> 1] };
}

async function show(buffer) {
  const t0 = performance.now();
  const { header, raw, segments, joints } = decode(buffer);
  await updateMesh(raw, header.n);
  setSkeleton(segments, joints);
  const { height, depth } = measure(raw, header.n);
  if (header.K && header.image_size) intrinsics = { K: header.K, width: header.image_size[0], height: header.image_size[1] };
  if (!framed) { resetView(depth); framed = true; }
  Object.assign(state, { seq: header.seq, splats: header.n, source: header.source, stamp: header.stamp,
                         heightM: height, bytes: buffer.byteLength, updates: state.updates + 1, depth,
                         updateMs: performance.now() - t0 });
  state.shown = state.frames; // frames drawn before this avatar: tests wait for a few after it
}

// Latest wins: while one avatar is being built, only the newest of those arriving meanwhile is kept.
let busy = false, pending = null;
async function receive(buffer) {
  pending = buffer;
  if (busy) return;
  busy = true;
  try {
    while (pending) {
      const next = pending;
      pending = null;
      try { await show(next); } catch (e) { console.error(e); }
    }
  } finally { busy = false; }
}

function connect() {
  const url = params.get("ws") || `ws://${location.host}/ws`;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { state.connected = true; };
  ws.onclose = () => { state.connected = false; setTimeout(connect, 1000); };
  ws.onmessage = (event) => receive(event.data);
}

function updateHud(now) {
  const mb = (state.bytes / 1e6).toFixed(2);
  const stamp = state.stamp ? ` stamp ${state.stamp.toFixed(3)}` : "";
  hud.textContent = `${state.fps.toFixed(1)} fps  ${state.splats.toLocaleString("en")} splats  ` +
    `${state.heightM.toFixed(2)} m tall  ${mb} MB\n` +
    `update #${state.seq}${stamp} (${state.updateMs.toFixed(0)} ms)  ${state.connected ? "live" : "disconnected"}\n${state.source}`;
}

let fpsStart = performance.now(), fpsFrames = 0;
renderer.setAnimationLoop((now) => {
  controls.update();
  renderer.render(scene, camera);
  state.frames += 1;
  fpsFrames += 1;
  if (now - fpsStart >= 1000) {
    state.fps = (fpsFrames * 1000) / (now - fpsStart);
    fpsStart = now; fpsFrames = 0;
    updateHud(now);
  }
});

window.hgmView = {
  state,
  setBackground(hex) { renderer.setClearColor(new THREE.Color(hex)); },
  // {K: [[fx,0,cx],[0,fy,cy],[0,0,1]], width, height}: look through that camera again.
  setCamera(cam) { intrinsics = cam; resetView(state.depth || 1); },
  showSkeleton(on) { skeleton.visible = on; },
  resetView() { resetView(state.depth || 1); },
};

resize();
connect();
