// The chat page: one WebSocket per room to the svcbus edge, plus GET /api/stats/{room}.
//
// Everything from the network is inserted with textContent, never innerHTML:
// a message is text, whatever it contains.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ROOM = /^[a-z0-9][a-z0-9-]{0,31}$/;
  const MAX_MESSAGES = 200; // the page keeps the latest ones, like the service keeps 50

  let socket = null;
  let me = null;
  let statsSeq = -1;

  // For the browser test and for poking from the devtools console.
  window.demoChat = {
    get socket() { return socket; },
    get nick() { return me; },
  };

  function show(section) {
    $("join").hidden = section !== "join";
    $("chat").hidden = section !== "chat";
  }

  function setStatus(text, online) {
    $("status").textContent = text;
    $("status").classList.toggle("online", Boolean(online));
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function time(ms) {
    const when = new Date(ms);
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function addLines(items, { before = false } = {}) {
    const list = $("messages");
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    if (before) list.prepend(...items);
    else list.append(...items);
    while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
    if (nearBottom) list.scrollTop = list.scrollHeight;
  }

  function shown(id) {
    return [...$("messages").children].some((item) => item.dataset.id === id);
  }

  function messageItem(msg) {
    const item = document.createElement("li");
    item.className = "message" + (msg.nick === me ? " mine" : "");
    item.dataset.id = msg.id;
    const stamp = document.createElement("span");
    stamp.className = "time";
    stamp.textContent = time(msg.at);
    const nick = document.createElement("span");
    nick.className = "nick";
    nick.textContent = msg.nick;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = msg.text;
    item.append(stamp, nick, text);
    return item;
  }

  function addMessage(msg) {
    if (!shown(msg.id)) addLines([messageItem(msg)]);
  }

  function notice(text) {
    const item = document.createElement("li");
    item.className = "system";
    item.textContent = text;
    return item;
  }

  function addNotice(text) {
    addLines([notice(text)]);
  }

  function showUsers(nicks) {
    const list = $("users");
    list.replaceChildren(...nicks.map((nick) => {
      const item = document.createElement("li");
      item.textContent = nick;
      return item;
    }));
  }

  function showStats(stats) {
    // The HTTP snapshot and live updates race; seq says which is newer.
    if (stats.seq < statsSeq) return;
    statsSeq = stats.seq;
    $("stat-messages").textContent = String(stats.messages);
    $("stat-users").textContent = String(stats.active_users);
    $("stat-rate").textContent = String(stats.messages_per_minute);
  }

  async function fetchStats(room) {
    try {
      const response = await fetch(`/api/stats/${encodeURIComponent(room)}`);
      if (response.ok) showStats(await response.json());
    } catch (err) {
      console.warn("stats unavailable", err);
    }
  }

  const handlers = {
    welcome(frame) {
      // Room frames travel apart from this one and may overtake it: the history
      // goes before whatever arrived already, without repeating a message.
      me = frame.nick;
      const earlier = frame.history.filter((msg) => !shown(msg.id)).map(messageItem);
      addLines([...earlier, notice(`You joined #${frame.room} as ${frame.nick}.`)], { before: true });
      showUsers(frame.users);
    },
    message: addMessage,
    joined(frame) {
      if (frame.nick !== me) addNotice(`${frame.nick} joined.`);
      showUsers(frame.users);
    },
    left(frame) {
      addNotice(`${frame.nick} left.`);
      showUsers(frame.users);
    },
    stats(frame) { showStats(frame.stats); },
    error(frame) { showError(frame.error); },
  };

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      console.warn("ignored a frame that is not JSON");
      return;
    }
    const handle = Object.hasOwn(handlers, frame.type) ? handlers[frame.type] : null;
    if (handle) handle(frame);
  }

  function join(room, nick) {
    leave();
    statsSeq = -1;
    me = nick;
    $("room-name").textContent = room;
    $("messages").replaceChildren();
    showUsers([]);
    showError("");
    setStatus("connecting");
    show("chat");
    history.replaceState(null, "", `?room=${encodeURIComponent(room)}&nick=${encodeURIComponent(nick)}`);

    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/chat/${encodeURIComponent(room)}?nick=${encodeURIComponent(nick)}`;
    const ws = new WebSocket(url);
    socket = ws;
    ws.addEventListener("open", () => {
      setStatus("connected", true);
      fetchStats(room);
      $("text").focus();
    });
    ws.addEventListener("message", onFrame);
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return; // an earlier room's socket
      socket = null;
      setStatus(`disconnected (${event.code})`);
      if (event.code !== 1000) addNotice("Connection closed. Join again to reconnect.");
    });
  }

  function leave() {
    if (socket) {
      const old = socket;
      socket = null;
      old.close(1000);
    }
  }

  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("room").value.trim();
    const nick = $("nick").value.trim();
    if (!ROOM.test(room) || !nick) return;
    join(room, nick);
  });

  $("post").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text");
    const text = input.value;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("not connected");
      return;
    }
    showError("");
    // Validation is the service's job (it answers with an error frame); the
    // page sends what was typed, even an empty line.
    socket.send(JSON.stringify({ text }));
    input.value = "";
  });

  $("leave").addEventListener("click", () => {
    leave();
    show("join");
  });

  // ?room=lobby&nick=ada joins at once (links, tests); otherwise show the form.
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  const nick = params.get("nick");
  if (room) $("room").value = room;
  if (nick) $("nick").value = nick;
  if (room && nick && ROOM.test(room)) join(room, nick);
  else show("join");
})();
