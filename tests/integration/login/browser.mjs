// A real browser through the whole login: Debian's `chromium` driven by npm `playwright-core`
// (its own browser downloads are not reachable here).
//
//   node browser.mjs --app http://localhost:PORT --op http://127.0.0.1:PORT [--refresh-wait 0]
//                    [--login-only]   (stop once logged in; print the session cookie to reuse)
//
// Logs in through the OP's login and consent pages, lands on the page asked for, calls an API
// from the page with `fetch`, outlives the access token (`--refresh-wait` seconds) and calls
// again, logs out through the app, and is asked to log in again; then logs in once more, logs
// out at the OP (which sends a back-channel logout to the app) and is asked to log in again.
// Prints one JSON line with what it saw at each step. Pages from the app are the echo
// upstream's JSON: what the upstream received.

import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    app: { type: 'string' },
    op: { type: 'string' },
    'refresh-wait': { type: 'string', default: '0' },
    user: { type: 'string', default: 'alice' },
    'login-only': { type: 'boolean', default: false },
  },
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
});
const steps = {};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function loginAtOp(page) {
  // The OP's development login page: any login and password.
  await page.waitForURL((url) => url.href.startsWith(args.op), { waitUntil: 'domcontentloaded' });
  const onLoginPage = page.url();
  await page.fill('input[name=login]', args.user);
  await page.fill('input[name=password]', 'any');
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[type=submit]')]);
  // Consent, the first time.
  if (page.url().startsWith(args.op)) {
    await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[type=submit]')]);
  }
  return onLoginPage;
}

async function echoed(page) {
  const text = await page.evaluate(() => document.body.innerText);
  try {
    return JSON.parse(text);
  } catch {
    return { unparsed: text.slice(0, 500) };
  }
}

async function apiCall(page, path) {
  return page.evaluate(async (target) => {
    const response = await fetch(target, { headers: { accept: 'application/json' } });
    const body = await response.text();
    let upstream = null;
    try {
      upstream = JSON.parse(body);
    } catch {}
    return { status: response.status, upstream, redirected: response.redirected };
  }, path);
}

async function cookieNames(context) {
  return (await context.cookies(args.app)).map((cookie) => ({
    name: cookie.name,
    httpOnly: cookie.httpOnly,
    secure: cookie.secure,
    sameSite: cookie.sameSite,
    size: cookie.name.length + cookie.value.length,
  }));
}

try {
  const context = await browser.newContext();
  const page = await context.newPage();

  // 1. A protected page: sent to the OP, log in, land on the page asked for.
  await page.goto(`${args.app}/orders?page=2`, { waitUntil: 'domcontentloaded' });
  steps.login_page = await loginAtOp(page);
  await page.waitForURL((url) => url.href.startsWith(args.app), { waitUntil: 'domcontentloaded' });
  steps.landed = { url: page.url(), upstream: await echoed(page) };
  steps.cookies = await cookieNames(context);

  if (args['login-only']) {
    // The session cookie as a `Cookie` header, for a test that sends its own requests.
    steps.session_cookie = (await context.cookies(args.app))
      .filter((cookie) => cookie.name.startsWith('__Host-mesh-session.'))
      .map((cookie) => `${cookie.name}=${cookie.value}`)
      .join('; ');
  } else {
    // 2. An API call from the page.
    steps.api = await apiCall(page, '/api/orders');

    // 3. Outlive the access token; the next call is refreshed while it waits.
    await sleep(Number(args['refresh-wait']) * 1000);
    steps.api_after_expiry = await apiCall(page, '/api/orders');

    // 4. A cross-site form cannot log the user out; the app's own logout can.
    steps.logout = {};
    await page.evaluate(() => {
      const form = document.createElement('form');
      form.method = 'POST';
      form.action = '/oauth2/logout';
      document.body.appendChild(form);
      form.submit();
    });
    await page.waitForURL((url) => url.href.startsWith(args.op), { waitUntil: 'domcontentloaded' });
    steps.logout.end_session = page.url();
    steps.logout.cookies_after = await cookieNames(context);
    // The OP asks whether to sign out of it too.
    await Promise.all([
      page.waitForURL((url) => url.href.startsWith(args.app), { waitUntil: 'domcontentloaded' }),
      page.click('button[autofocus], button[type=submit]'),
    ]);
    steps.logout.landed = page.url();
    steps.logout.api = await apiCall(page, '/api/orders');
    await page.goto(`${args.app}/orders`, { waitUntil: 'domcontentloaded' });
    steps.logout.asked_again = page.url();

    // 5. Log in again, then log out at the OP: its back-channel logout ends the app session.
    steps.backchannel = {};
    steps.backchannel.login_page = await loginAtOp(page);
    await page.waitForURL((url) => url.href.startsWith(args.app), { waitUntil: 'domcontentloaded' });
    steps.backchannel.landed = page.url();
    steps.backchannel.api_before = await apiCall(page, '/api/orders');
    await page.goto(`${args.op}/session/end`, { waitUntil: 'domcontentloaded' });
    await Promise.all([
      page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
      page.click('button[autofocus], button[type=submit]'),
    ]);
    steps.backchannel.cookies_kept = (await cookieNames(context)).map((cookie) => cookie.name);
    await page.goto(`${args.app}/orders`, { waitUntil: 'domcontentloaded' });
    steps.backchannel.asked_again = page.url();
  }
  steps.ok = true;
} catch (error) {
  steps.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(steps));
