// Echo listener on Microsoft's hyco-https, pointed at the gateway's local relay emulator.
// Environment: RELAY_LISTEN_URI (ws://127.0.0.1:PORT/$hc/NAME?sb-hc-action=listen),
// SAS_KEY_NAME, SAS_KEY. Prints "listening" once the control channel is open.
'use strict';

const https = require('hyco-https');

const uri = process.env.RELAY_LISTEN_URI;
const keyName = process.env.SAS_KEY_NAME;
const key = process.env.SAS_KEY;

// The library uses `server` verbatim as the control-channel URL (protocol notes section 10);
// a token function makes it send renewToken hourly, as a long-running listener would.
const server = https.createRelayedServer(
  { server: uri, token: () => https.createRelayToken(uri, keyName, key) },
  (req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      // Echo the body and report what the listener saw, so the test can compare both ends.
      res.setHeader('Content-Type', 'application/octet-stream');
      res.setHeader('X-Method', req.method);
      res.setHeader('X-Url', req.url);
      res.setHeader('X-Length', String(body.length));
      // hyco-https 1.4.5 never answers `res.end(<empty Buffer>)`: an empty chunk queues no
      // frame at all, so the request would time out (504). `res.end()` takes its no-body path.
      if (body.length === 0) {
        res.end();
      } else {
        res.end(body);
      }
    });
  }
);

server.on('listening', () => console.log('listening'));
server.on('error', (err) => console.error('relay error:', err && err.message));
server.listen();
