// Echo listener on Microsoft's hyco-ws, pointed at the gateway's local relay emulator.
// Environment: RELAY_LISTEN_URI, SAS_KEY_NAME, SAS_KEY (as for https-listener.js).
// Text comes back upper-cased and binary reversed, so an echo is distinguishable from a loop.
'use strict';

const WebSocket = require('hyco-ws');

const uri = process.env.RELAY_LISTEN_URI;
const keyName = process.env.SAS_KEY_NAME;
const key = process.env.SAS_KEY;

// hyco-ws connects its control channel in the constructor (protocol notes section 10).
const server = WebSocket.createRelayedServer(
  { server: uri, token: () => WebSocket.createRelayToken(uri, keyName, key) },
  (ws) => {
    ws.on('message', (data, flags) => {
      if (flags && flags.binary) {
        ws.send(Buffer.from(data).reverse(), { binary: true });
      } else {
        ws.send(String(data).toUpperCase());
      }
    });
  }
);

server.on('listening', () => console.log('listening'));
server.on('error', (err) => console.error('relay error:', err && err.message));
