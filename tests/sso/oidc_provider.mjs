// A real OpenID Connect provider on loopback for the SSO tests: panva's oidc-provider (OpenID
// certified, pinned in tests/clients/package.json) with one confidential client, accounts read
// from a JSON file at every sign-in (a test edits the file to change someone's groups), and its
// own sign-in and consent pages, plain HTML forms a browser fills in.
//
//   node tests/sso/oidc_provider.mjs CONFIG.json
//
// CONFIG: {"client_id", "client_secret", "redirect_uris": [...], "accounts_file"}. The accounts
// file maps a username to {"sub", "password", "email", "name", "groups": [...]}. It listens on a
// free loopback port and prints one line, {"issuer": "http://127.0.0.1:<port>"}, once it serves.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

const { default: Provider } = await import(
  new URL('../clients/node_modules/oidc-provider/lib/index.js', import.meta.url));

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = () => JSON.parse(readFileSync(config.accounts_file, 'utf8'));

function accountBySub(sub) {
  return Object.entries(accounts()).find(([, account]) => account.sub === sub);
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, status, title, body) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store',
  });
  res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>${escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 26rem; margin: 3rem auto">
<h1>Test IdP</h1>${body}</body></html>`);
}

function loginForm(res, uid, error = '') {
  page(res, error ? 401 : 200, 'Sign in · Test IdP', `
<form method="post" action="/interaction/${uid}/login">
  ${error ? `<p role="alert" id="error">${escape(error)}</p>` : ''}
  <p><label>Username
    <input id="username" name="username" autocomplete="username" required autofocus></label></p>
  <p><label>Password
    <input id="password" name="password" type="password" required></label></p>
  <p><button id="sign-in" type="submit">Sign in</button></p>
</form>`);
}

async function formBody(req) {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  return Object.fromEntries(new URLSearchParams(raw));
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = {
  ...privateKey.export({ format: 'jwk' }), kid: 'test-key-1', use: 'sig', alg: 'RS256',
};

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: config.client_id,
      client_secret: config.client_secret,
      redirect_uris: config.redirect_uris,
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [jwk] },
    cookies: { keys: ['test-idp-cookie-key'] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, sub) {
      const found = accountBySub(sub);
      if (!found) return undefined;
      const [username, account] = found;
      return {
        accountId: sub,
        async claims() {
          return {
            sub, email: account.email, email_verified: true, name: account.name,
            preferred_username: username, groups: account.groups || [],
          };
        },
      };
    },
  });
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    const match = req.url.match(/^\/interaction\/([^/?]+)(?:\/(login|confirm|abort))?/);
    if (!match) return callback(req, res);
    try {
      const [, uid, action] = match;
      const details = await provider.interactionDetails(req, res);
      if (details.uid !== uid) return page(res, 400, 'Error', '<p>Wrong interaction.</p>');
      const { prompt, params, session } = details;
      if (req.method === 'GET' && !action) {
        if (prompt.name === 'login') return loginForm(res, uid);
        return page(res, 200, 'Consent · Test IdP', `
<p>${escape(params.client_id)} asks for: ${escape(params.scope)}</p>
<form method="post" action="/interaction/${uid}/confirm">
  <button id="allow" type="submit">Allow</button></form>
<form method="post" action="/interaction/${uid}/abort">
  <button id="deny" type="submit">Deny</button></form>`);
      }
      if (req.method !== 'POST') return page(res, 405, 'Error', '<p>Method not allowed.</p>');
      if (action === 'login') {
        const { username, password } = await formBody(req);
        const account = accounts()[username];
        if (!account || account.password !== password) {
          return loginForm(res, uid, 'Wrong username or password.');
        }
        return await provider.interactionFinished(req, res, { login: { accountId: account.sub } },
          { mergeWithLastSubmission: false });
      }
      if (action === 'confirm') {
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
        const { missingOIDCScope, missingOIDCClaims } = prompt.details;
        if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
        if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
        const grantId = await grant.save();
        return await provider.interactionFinished(req, res, { consent: { grantId } },
          { mergeWithLastSubmission: true });
      }
      return await provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
    } catch (err) {
      return page(res, 400, 'Error', `<p id="error">${escape(err.message)}</p>`);
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
