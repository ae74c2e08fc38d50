// Following a WebSocket: /ws (every job, by event `id`) or /ws/{id} (one job, by `seq`).
// A dropped socket reopens with backoff after the last event it handed on, so no event
// is lost or applied twice; a refused key asks for another, an ended job stops.

import { askForKey, auth } from "./api.js?v={{version}}";
import { setLive } from "./ui.js?v={{version}}";

export class Follower {
  // Events of `path` after `position` (an event's `id` on /ws, its `seq` on /ws/{id}).
  constructor(path, field, position, onEvent, { endsWithJob = false } = {}) {
    Object.assign(this, { path, field, position, onEvent, endsWithJob });
    this.socket = null;
    this.retries = 0;
    this.stopped = false;
    this.open();
  }

  open() {
    const url = new URL(this.path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("after", String(this.position));
    if (auth.key) url.searchParams.set("api_key", auth.key); // a browser cannot set headers
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = (close) => this.closed(socket, close);
  }

  receive(event) {
    if (event.type === "WS_CONNECTED") {
      this.retries = 0;
      setLive("live");
      return;
    }
    if (event[this.field] <= this.position) return;
    this.position = event[this.field];
    this.onEvent(event);
  }

  closed(socket, close) {
    if (this.socket !== socket || this.stopped) return;
    this.socket = null;
    if (close.code === 4401 || close.code === 4403) return askForKey(close.reason);
    if (close.code === 4004 || (close.code === 1000 && this.endsWithJob)) return setLive("done");
    setLive("reconnecting");
    this.timer = setTimeout(() => this.open(), Math.min(5000, 250 * 2 ** this.retries++));
  }

  ensureOpen() {
    if (this.socket || this.stopped) return;
    clearTimeout(this.timer);
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close(1000);
  }
}
