// kube-prewarm browser SDK: tell the listener a user is about to need a model.
//
//   import * as prewarm from "https://prewarm.example.com/sdk/prewarm.js";
//   const session = prewarm.open({ endpoint: "https://prewarm.example.com", target: "llm/chat-8b" });
//   // a batch job (raises the floor only up to the target's batch allowance):
//   prewarm.open({ endpoint, target: "llm/chat-8b", priority: "batch" });
//   // ... later, if the page stays open but the session ends:
//   session.close();
//
// `open` sends dev.prewarm.session.opened at once (structured-mode CloudEvent, fetch with
// keepalive), a heartbeat every `heartbeatSeconds` while the page is visible (paused while it is
// hidden, one at once when it shows again), and dev.prewarm.session.closed on `pagehide` with
// navigator.sendBeacon. A 429 pauses sending until its Retry-After has passed. Dependency-free.

const TYPE_PREFIX = "dev.prewarm.session.";
const STRUCTURED = "application/cloudevents+json";
const PRIORITIES = ["interactive", "batch"];

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A session of one target; created by `open`. */
export class Session {
  constructor({ endpoint, target, heartbeatSeconds = 60, ttlSeconds, priority, source, token, fetchImpl, beacon, doc }) {
    if (!endpoint || !target) throw new Error("prewarm.open needs {endpoint, target}");
    if (priority !== undefined && !PRIORITIES.includes(priority)) {
      throw new Error(`prewarm.open: priority ${JSON.stringify(priority)} is not one of ${PRIORITIES.join(", ")}`);
    }
    this.priority = priority;
    this.endpoint = String(endpoint).replace(/\/+$/, "");
    this.target = target;
    this.id = randomId();
    this.heartbeatMs = Math.max(1, Number(heartbeatSeconds)) * 1000;
    this.ttlSeconds = ttlSeconds;
    this.source = source || (typeof location !== "undefined" ? location.origin : "prewarm-sdk/js");
    this.token = token;
    this.state = "open"; // open | paused (page hidden) | closed
    this.sent = { opened: 0, heartbeat: 0, closed: 0 };
    this.retryAt = 0; // epoch ms before which nothing is sent (429 Retry-After)
    this._fetch = fetchImpl || ((...args) => fetch(...args));
    this._beacon = beacon || ((url, data) => navigator.sendBeacon(url, data));
    this._doc = doc || document;
    this._seq = 0;
    this._timer = null;
    this._onVisibility = () => this._visibilityChanged();
    this._onPageHide = () => this.close();
    this._doc.addEventListener("visibilitychange", this._onVisibility);
    addEventListener("pagehide", this._onPageHide);
    this._send("opened");
    this._visibilityChanged();
  }

  _event(kind) {
    const data = { target: this.target, session: this.id };
    if (this.ttlSeconds) data.ttl = this.ttlSeconds;
    if (this.priority) data.priority = this.priority;
    this._seq += 1;
    return JSON.stringify({
      specversion: "1.0",
      type: TYPE_PREFIX + kind,
      source: this.source,
      id: `${this.id}-${this._seq}`,
      time: new Date().toISOString(),
      datacontenttype: "application/json",
      data,
    });
  }

  async _send(kind) {
    if (Date.now() < this.retryAt && kind === "heartbeat") return; // a later heartbeat will do
    const headers = { "Content-Type": STRUCTURED };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const request = { method: "POST", headers, body: this._event(kind), keepalive: true, mode: "cors" };
    let response;
    try {
      response = await this._fetch(`${this.endpoint}/events`, request);
    } catch (error) {
      // Some browsers refuse keepalive requests that need a CORS preflight: retry without it.
      try {
        response = await this._fetch(`${this.endpoint}/events`, { ...request, keepalive: false });
      } catch (again) {
        return;
      }
    }
    if (response.status === 429) {
      const seconds = Number(response.headers.get("Retry-After")) || 1;
      this.retryAt = Date.now() + seconds * 1000;
      if (kind === "opened" && this.state !== "closed") {
        setTimeout(() => this.state !== "closed" && this._send("opened"), seconds * 1000);
      }
      return;
    }
    if (response.status === 202) this.sent[kind] += 1;
  }

  _visibilityChanged() {
    if (this.state === "closed") return;
    const visible = this._doc.visibilityState !== "hidden";
    if (visible && this._timer === null) {
      if (this.state === "paused") this._send("heartbeat"); // back: say so at once
      this.state = "open";
      this._timer = setInterval(() => this._send("heartbeat"), this.heartbeatMs);
    } else if (!visible && this._timer !== null) {
      clearInterval(this._timer);
      this._timer = null;
      this.state = "paused";
    }
  }

  /** End the session: stop heartbeats and send `closed` with a beacon (survives page unload). */
  close() {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this._timer !== null) clearInterval(this._timer);
    this._timer = null;
    this._doc.removeEventListener("visibilitychange", this._onVisibility);
    removeEventListener("pagehide", this._onPageHide);
    // Browsers only let beacons carry CORS-safelisted types without a preflight: the listener
    // reads structured-mode events sent as text/plain on /beacon.
    const body = new Blob([this._event("closed")], { type: "text/plain;charset=UTF-8" });
    if (this._beacon(`${this.endpoint}/beacon`, body)) this.sent.closed += 1;
  }
}

/** Open a session for `target` on the listener at `endpoint`; returns the Session. */
export function open(options) {
  return new Session(options);
}
