/*
 * The chat page. Answers stream over fetch + ReadableStream from
 * POST <sessions_url>/<id>/messages as JSON events (chat/pipeline.py): provider, delta, usage,
 * error, rate_limited, done. Stop aborts the fetch; the server sees the disconnect, stops the
 * upstream call and keeps the partial answer.
 *
 * Safety: a model's answer is Markdown rendered by marked, then sanitised by DOMPurify before
 * it touches the DOM (no script, no event-handler attribute, no javascript: URL survives); user
 * text is only ever set as textContent. The page's Content-Security-Policy forbids inline script
 * as a second line of defence. The gateway's own messages (errors, notices) quote names in
 * Markdown-style backticks: `withCode` shows those as <code> elements it builds itself.
 */
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const $ = (id) => document.getElementById(id);
  const els = {
    sessions: $("sessions"), messages: $("messages"), model: $("model"), title: $("title"),
    input: $("input"), send: $("send"), stop: $("stop"), retry: $("retry"),
    notice: $("notice"), composer: $("composer"), newChat: $("new-chat"),
    app: $("app"), historyToggle: $("history-toggle"),
  };
  const state = {
    sessionId: config.session_id, controller: null, busy: false, sessions: [],
    available: new Set(),  // the models that can serve now (GET models_url)
  };

  const SANITIZE = {
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe"],
    FORBID_ATTR: ["style"],
  };
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
  hljs.configure({ ignoreUnescapedHTML: true });

  function renderMarkdown(target, text) {
    const html = marked.parse(text, { gfm: true, async: false });
    target.innerHTML = DOMPurify.sanitize(html, SANITIZE);
    target.querySelectorAll("pre code").forEach((block) => hljs.highlightElement(block));
  }

  // --- server calls -------------------------------------------------------------------------
  function signInAgain() {
    window.location.href = `${config.page_url}login/?next=${encodeURIComponent(window.location.pathname)}`;
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": config.csrf_token },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      signInAgain();
      throw new Error("signed out");
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error(errorMessage(data, response.status));
    return data;
  }

  function errorMessage(data, status) {
    return (data && data.error && data.error.message) || `request failed (HTTP ${status})`;
  }

  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield JSON.parse(data);
      }
    }
  }

  // --- rendering ----------------------------------------------------------------------------
  // `text` as text nodes, each `quoted` part a <code> element: never parsed as HTML.
  function withCode(target, text) {
    const parts = String(text).split(/`([^`\n]+)`/);
    target.replaceChildren(...parts.map((part, i) => {
      if (i % 2 === 0) return document.createTextNode(part);
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    }));
  }

  function notice(text) {
    withCode(els.notice, text || "");
    els.notice.hidden = !text;
  }

  function messageView(message) {
    const view = document.createElement("article");
    view.className = `message ${message.role}`;
    view.dataset.status = message.status || "complete";
    const note = document.createElement("p");
    note.className = "trim-note";
    note.hidden = true;
    const content = document.createElement("div");
    content.className = "content";
    const meta = document.createElement("p");
    meta.className = "meta";
    const error = document.createElement("p");
    error.className = "error";
    error.setAttribute("role", "alert");
    error.hidden = true;
    view.append(note, content, error, meta);
    view.text = message.content || "";
    if (message.role === "user") {
      content.textContent = view.text;
    } else {
      renderMarkdown(content, view.text);
      if (message.context_trimmed) showTrimmed(view, message.context_trimmed);
      if (message.error) showError(view, message.error);
      if (message.status === "stopped") meta.dataset.stopped = "1";
      showMeta(view, message);
    }
    els.messages.append(view);
    return view;
  }

  function showTrimmed(view, count) {
    const note = view.querySelector(".trim-note");
    note.textContent = `${count} earlier message${count === 1 ? " was" : "s were"} left out of ` +
      "this answer's context to fit the model's context window.";
    note.hidden = false;
  }

  function showError(view, text) {
    const error = view.querySelector(".error");
    withCode(error, text);
    error.hidden = false;
    view.dataset.status = "error";
  }

  function showMeta(view, info) {
    const parts = [];
    if (info.provider) parts.push(info.provider);
    if (info.model) parts.push(info.model);
    if (info.input_tokens || info.output_tokens) {
      parts.push(`${info.input_tokens} in / ${info.output_tokens} out` +
        `${info.estimated ? " (estimated)" : ""}`);
    }
    if (info.cost_usd && Number(info.cost_usd) > 0) parts.push(`$${Number(info.cost_usd).toPrecision(3)}`);
    if (view.dataset.status === "stopped") parts.push("stopped");
    view.querySelector(".meta").textContent = parts.join(" · ");
  }

  function scrollToEnd() {
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function setBusy(busy) {
    state.busy = busy;
    els.send.disabled = busy;
    els.stop.hidden = !busy;
    updateRetry();
  }

  function updateRetry() {
    const last = els.messages.lastElementChild;
    els.retry.hidden = state.busy || !last;
  }

  // --- sessions -----------------------------------------------------------------------------
  // The models the user may use, in name order; one that cannot serve now (every circuit open)
  // is listed disabled, marked "(unavailable)", so the user sees it exists and comes back.
  async function loadModels() {
    const { models, unavailable = [] } = await api("GET", config.models_url);
    const wanted = els.model.value || window.localStorage.getItem("chat.model");
    state.available = new Set(models);
    const options = models.map((name) => new Option(name, name));
    for (const item of unavailable) {
      const option = new Option(`${item.model} (unavailable)`, item.model);
      option.disabled = true;
      option.title = item.reason === "circuit_open"
        ? `Its upstreams are failing; try again in ${item.retry_after_s} s.`
        : "No deployment serves it now.";
      options.push(option);
    }
    options.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
    els.model.replaceChildren(...options);
    els.model.value = state.available.has(wanted) ? wanted : (models[0] || "");
    if (!models.length) {
      notice(unavailable.length
        ? "Every model you may use is unavailable right now: its upstreams are failing. Reload in a minute."
        : "No model is available to you. Ask an administrator.");
    }
  }

  async function loadSessions() {
    const { sessions } = await api("GET", config.sessions_url);
    state.sessions = sessions;
    els.sessions.replaceChildren(...sessions.map(sessionItem));
  }

  function sessionItem(session) {
    const item = document.createElement("li");
    item.dataset.id = session.id;
    if (session.id === state.sessionId) item.classList.add("active");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = session.title || "Untitled chat";
    open.title = open.textContent;  // the whole title, where the sidebar cuts it
    open.addEventListener("click", () => openSession(session.id, true));
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "rename";
    rename.title = "Rename";
    rename.textContent = "Rename";
    rename.addEventListener("click", () => startRename(item, session));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.title = "Delete";
    remove.textContent = "Delete";
    remove.addEventListener("click", () => confirmDelete(remove, session));
    const actions = document.createElement("span");
    actions.className = "actions";
    actions.append(rename, remove);
    item.append(open, actions);
    return item;
  }

  function startRename(item, session) {
    const field = document.createElement("input");
    field.type = "text";
    field.className = "rename-field";
    field.value = session.title;
    field.maxLength = 200;
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      if (save && field.value.trim() && field.value !== session.title) {
        try {
          await api("PATCH", `${config.sessions_url}/${session.id}`, { title: field.value });
        } catch (error) {
          notice(error.message);
        }
      }
      await loadSessions();
      if (session.id === state.sessionId) refreshTitle();
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    field.addEventListener("blur", () => finish(true));
    item.replaceChildren(field);
    field.focus();
    field.select();
  }

  async function confirmDelete(button, session) {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm delete";
      return;
    }
    try {
      await api("DELETE", `${config.sessions_url}/${session.id}`);
    } catch (error) {
      notice(error.message);
    }
    if (session.id === state.sessionId) newChat();
    await loadSessions();
  }

  function refreshTitle() {
    const session = state.sessions.find((s) => s.id === state.sessionId);
    els.title.textContent = session ? session.title : "";
  }

  function markActive() {
    els.sessions.querySelectorAll("li").forEach((li) => {
      li.classList.toggle("active", Number(li.dataset.id) === state.sessionId);
    });
  }

  async function openSession(id, push) {
    if (state.busy) return;
    let session;
    try {
      session = await api("GET", `${config.sessions_url}/${id}`);
    } catch (error) {
      notice(error.message);
      return;
    }
    state.sessionId = session.id;
    if (push) window.history.pushState({ id: session.id }, "", `${config.page_url}${session.id}/`);
    notice("");
    showHistory(false);
    els.messages.replaceChildren();
    session.messages.forEach(messageView);
    if (state.available.has(session.model)) els.model.value = session.model;
    els.title.textContent = session.title;
    markActive();
    updateRetry();
    scrollToEnd();
  }

  function newChat() {
    if (state.busy) return;
    state.sessionId = null;
    window.history.pushState({ id: null }, "", config.page_url);
    els.messages.replaceChildren();
    els.title.textContent = "";
    notice("");
    showHistory(false);
    markActive();
    updateRetry();
    els.input.focus();
  }

  // Phones: the history is a panel over the conversation, opened by the header's button.
  function showHistory(open) {
    const wasOpen = els.app.classList.contains("history-open");
    els.app.classList.toggle("history-open", open);
    els.historyToggle.setAttribute("aria-expanded", String(open));
    if (open && !wasOpen) els.newChat.focus();
    else if (!open && wasOpen && document.activeElement.closest(".sidebar")) {
      els.historyToggle.focus();
    }
  }

  // --- a turn -------------------------------------------------------------------------------
  async function ask(retry) {
    if (state.busy) return;
    const model = els.model.value;
    const content = els.input.value;
    if (!model) return notice("Pick a model first.");
    if (!retry && !content.trim()) return;
    notice("");
    if (!state.sessionId) {
      try {
        const session = await api("POST", config.sessions_url, { model });
        state.sessionId = session.id;
        window.history.pushState({ id: session.id }, "", `${config.page_url}${session.id}/`);
      } catch (error) {
        return notice(error.message);
      }
    }
    if (retry) {
      while (els.messages.lastElementChild &&
             !els.messages.lastElementChild.classList.contains("user")) {
        els.messages.lastElementChild.remove();
      }
    } else {
      messageView({ role: "user", content });
      els.input.value = "";
    }
    window.localStorage.setItem("chat.model", model);
    const answer = messageView({ role: "assistant", content: "", status: "streaming", model });
    await stream(answer, retry ? { retry: true, model } : { content, model });
    await loadSessions();
    refreshTitle();
  }

  async function stream(answer, body) {
    const content = answer.querySelector(".content");
    const info = { model: body.model };
    let pending = false;
    const render = () => {
      pending = false;
      renderMarkdown(content, answer.text);
      scrollToEnd();
    };
    state.controller = new AbortController();
    setBusy(true);
    try {
      const response = await fetch(`${config.sessions_url}/${state.sessionId}/messages`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": config.csrf_token },
        body: JSON.stringify(body),
        signal: state.controller.signal,
      });
      if (response.status === 401) return signInAgain();
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        return showError(answer, errorMessage(data, response.status));
      }
      info.request_id = response.headers.get("x-request-id") || "";
      const trimmed = Number(response.headers.get("x-chat-context-trimmed") || 0);
      if (trimmed) showTrimmed(answer, trimmed);
      // The message is stored by now: show the chat (and its title) in the history at once.
      loadSessions().then(refreshTitle, () => {});
      for await (const event of sseEvents(response)) {
        if (event.type === "delta") {
          answer.text += event.content;
          if (!pending) {
            pending = true;
            window.requestAnimationFrame(render);
          }
        } else if (event.type === "provider") {
          info.provider = event.provider;
        } else if (event.type === "usage") {
          Object.assign(info, event);
        } else if (event.type === "error") {
          showError(answer, event.message);
        } else if (event.type === "rate_limited") {
          showError(answer, `Rate limited: try again in ${event.retry_after} s.`);
        } else if (event.type === "done" && answer.dataset.status === "streaming") {
          answer.dataset.status = "complete";
        }
        showMeta(answer, info);
      }
      if (answer.dataset.status === "streaming") showError(answer, "The answer ended early.");
    } catch (error) {
      if (error.name === "AbortError") {
        answer.dataset.status = "stopped";
        // No usage event follows a Stop: the server stores the answer with the ledger row's
        // tokens and cost once that row is written; fetch them from the stored session.
        if (state.sessionId) storedUsage(answer, info, state.sessionId);
      } else {
        showError(answer, `Connection lost: ${error.message}`);
      }
    } finally {
      render();
      showMeta(answer, info);
      state.controller = null;
      setBusy(false);
      // A failed answer may mean the model's circuits opened: show the picker as it is now.
      if (answer.dataset.status === "error") loadModels().catch(() => {});
    }
  }

  // After Stop: poll the session (the API that loads it) with a short bounded backoff until
  // the stopped answer is stored, then show the tokens and cost it was billed.
  const STOPPED_POLL_MS = [150, 250, 400, 600, 900, 1300, 1800, 2500, 3000, 3000];

  async function storedUsage(answer, info, sessionId) {
    for (const delay of STOPPED_POLL_MS) {
      await new Promise((resolve) => window.setTimeout(resolve, delay));
      if (!answer.isConnected || state.sessionId !== sessionId) return;
      let session;
      try {
        session = await api("GET", `${config.sessions_url}/${sessionId}`);
      } catch (error) {
        continue;
      }
      const stored = session.messages.filter((m) => m.role === "assistant" &&
        (info.request_id ? m.request_id === info.request_id : m.status === "stopped")).pop();
      if (!stored) continue;
      if (!answer.isConnected) return;
      Object.assign(info, {
        provider: stored.provider || info.provider, model: stored.model || info.model,
        input_tokens: stored.input_tokens, output_tokens: stored.output_tokens,
        cost_usd: stored.cost_usd, estimated: false,
      });
      answer.dataset.messageId = stored.id;
      showMeta(answer, info);
      answer.dataset.billed = "1";
      return;
    }
  }

  // --- wiring -------------------------------------------------------------------------------
  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    ask(false);
  });
  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ask(false);
    }
  });
  els.stop.addEventListener("click", () => state.controller && state.controller.abort());
  els.retry.addEventListener("click", () => ask(true));
  els.newChat.addEventListener("click", newChat);
  els.historyToggle.addEventListener("click", () => {
    showHistory(!els.app.classList.contains("history-open"));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && els.app.classList.contains("history-open")) showHistory(false);
  });
  window.addEventListener("popstate", (event) => {
    const id = event.state && event.state.id;
    if (id) openSession(id, false);
    else if (!state.busy) {
      state.sessionId = null;
      els.messages.replaceChildren();
      markActive();
    }
  });

  (async () => {
    try {
      await loadModels();
      await loadSessions();
      if (state.sessionId) await openSession(state.sessionId, false);
    } catch (error) {
      notice(error.message);
    }
    updateRetry();
  })();
})();
