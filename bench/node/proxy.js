// The original design's edge: every request is forwarded to the bucket by http-proxy, no cache,
// `/` rewritten to `/index.html`. Listens on PORT, forwards to TARGET (http://host:port).
const http = require('http');
const httpProxy = require('http-proxy');

const proxy = httpProxy.createProxy();
proxy.on('proxyReq', (proxyReq, req) => {
  if (req.url === '/') proxyReq.path += 'index.html';
});
proxy.on('error', (err, req, res) => {
  res.writeHead(502);
  res.end('bad gateway');
});
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
http
  .createServer((req, res) => proxy.web(req, res, { target: process.env.TARGET, changeOrigin: true, agent }))
  .listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening'));
