// aicn js-libp2p reference peer for interop tests.
//
// One long-running libp2p node, driven by JSON lines on stdin and answering
// JSON lines on stdout; logs go to stderr.  See README.md for the protocol.
// Loopback only: no bootstrap, no mdns, no upnp, and a connection gater that
// refuses to dial anything but 127.0.0.0/8 and ::1.
import './node20-polyfill.mjs'

import { createHash, createCipheriv } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { autoNAT } from '@libp2p/autonat'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { floodsub } from '@libp2p/floodsub'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { mplex } from '@libp2p/mplex'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'

const ECHO = '/echo/1.0.0'
const PERF = '/perf/1.0.0'
const SINK = '/aicn-test/sink/1.0.0'
const CHUNK = 64 * 1024
const MANY = 1024 // stream limits for the test protocols
const DEFAULT_TIMEOUT_MS = 30_000

const log = (...args) => process.stderr.write(`[peer.mjs] ${args.join(' ')}\n`)
const send = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

// ---------------------------------------------------------------- options

const { values: opts } = parseArgs({
  options: {
    listen: { type: 'string', multiple: true },
    'key-type': { type: 'string', default: 'secp256k1' },
    'key-file': { type: 'string' },
    psk: { type: 'string' },
    'pnet-timeout': { type: 'string' },
    'dht-protocol': { type: 'string' },
    'dht-server': { type: 'boolean', default: false },
    floodsub: { type: 'boolean', default: false },
    topic: { type: 'string', multiple: true },
    'relay-server': { type: 'boolean', default: false },
    'relay-unlimited': { type: 'boolean', default: false },
    'relay-client': { type: 'boolean', default: false },
    autonat: { type: 'boolean', default: false },
    echo: { type: 'boolean', default: false },
    perf: { type: 'boolean', default: false },
    sink: { type: 'boolean', default: false },
    muxers: { type: 'string', default: 'yamux,mplex' },
    'no-connection-monitor': { type: 'boolean', default: false }
  },
  strict: true
})

// ------------------------------------------------------------ helpers

/** Deterministic test bytes: AES-128-CTR keystream, key = sha256("aicn-test-pattern:" + seed)[:16], IV = 0. */
export function pattern (seed, size) {
  const key = createHash('sha256').update(`aicn-test-pattern:${seed}`).digest().subarray(0, 16)
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size))
}

async function * chunks (buf) {
  for (let i = 0; i < buf.length; i += CHUNK) {
    yield buf.subarray(i, Math.min(i + CHUNK, buf.length))
  }
}

async function readAll (source) {
  const parts = []
  for await (const chunk of source) parts.push(Buffer.from(chunk.subarray()))
  return Buffer.concat(parts)
}

function isLoopbackAddr (ma) {
  for (const { name, value } of ma.getComponents()) {
    if (name === 'ip4') return value.startsWith('127.')
    if (name === 'ip6') return value === '::1' || value === '0:0:0:0:0:0:0:1'
    if (name === 'dns' || name === 'dns4' || name === 'dns6' || name === 'dnsaddr') return value === 'localhost'
  }
  return true // no IP part (e.g. bare /p2p/...): nothing to dial directly
}

function hex (bytes) { return Buffer.from(bytes).toString('hex') }

function seqnoHex (seqno) {
  if (seqno == null) return null
  if (typeof seqno === 'bigint') return seqno.toString(16).padStart(16, '0')
  return hex(seqno)
}

async function loadKey () {
  const keyType = opts['key-type'] === 'ed25519' ? 'Ed25519' : 'secp256k1'
  const path = opts['key-file']
  if (path != null) {
    try {
      return privateKeyFromProtobuf(await readFile(path))
    } catch (err) {
      if (err.code !== 'ENOENT') throw err
    }
  }
  const key = await generateKeyPair(keyType)
  if (path != null) await writeFile(path, privateKeyToProtobuf(key))
  return key
}

// ------------------------------------------------------------- node

const privateKey = await loadKey()

const services = {
  identify: identify({ maxInboundStreams: 8, maxOutboundStreams: 8 }),
  ping: ping({ maxInboundStreams: 1024, maxOutboundStreams: 1024 })
}
const dhtEnabled = opts['dht-protocol'] != null || opts['dht-server']
if (dhtEnabled) {
  services.dht = kadDHT({
    protocol: opts['dht-protocol'] ?? '/dbc/kad/1.0.0',
    clientMode: !opts['dht-server'],
    peerInfoMapper: passthroughMapper, // keep loopback addresses
    allowQueryWithZeroPeers: true
  })
}
if (opts.floodsub || opts.topic != null) services.pubsub = floodsub()
if (opts['relay-server']) {
  services.relay = circuitRelayServer({
    reservations: { maxReservations: 128, applyDefaultLimit: !opts['relay-unlimited'] }
  })
}
if (opts.autonat) services.autonat = autoNAT()

const transports = [tcp()]
if (opts['relay-client']) transports.push(circuitRelayTransport())

const muxerFactories = { yamux: () => yamux(), mplex: () => mplex() }
const streamMuxers = opts.muxers.split(',').filter(Boolean).map(name => {
  if (muxerFactories[name] == null) throw new Error(`unknown muxer ${name}`)
  return muxerFactories[name]()
})

const config = {
  privateKey,
  addresses: { listen: opts.listen ?? ['/ip4/127.0.0.1/tcp/0'] },
  transports,
  connectionEncrypters: [noise()],
  streamMuxers,
  peerDiscovery: [],
  connectionGater: {
    denyDialMultiaddr: (ma) => !isLoopbackAddr(ma)
  },
  connectionManager: {
    maxConnections: 1000,
    inboundConnectionThreshold: 10_000,
    maxIncomingPendingConnections: 1000,
    maxParallelDials: 100
  },
  connectionMonitor: { enabled: !opts['no-connection-monitor'] },
  services
}
if (opts.psk != null) {
  if (!/^[0-9a-fA-F]{64}$/.test(opts.psk)) throw new Error('--psk needs 64 hex digits')
  const keyText = `/key/swarm/psk/1.0.0/\n/base16/\n${opts.psk.toLowerCase()}`
  const init = { psk: new TextEncoder().encode(keyText) }
  if (opts['pnet-timeout'] != null) init.timeout = Number(opts['pnet-timeout'])
  config.connectionProtector = preSharedKey(init)
}

const node = await createLibp2p(config)

// --------------------------------------------------- protocol handlers

const handlerOpts = { maxInboundStreams: MANY, maxOutboundStreams: MANY, runOnLimitedConnection: true }
const streamOpts = (signal) => ({ signal, maxOutboundStreams: MANY, runOnLimitedConnection: true })

if (opts.echo) {
  await node.handle(ECHO, async ({ stream }) => {
    try {
      await stream.sink(stream.source)
    } catch (err) {
      log('echo handler:', err.message)
      stream.abort(err)
    }
  }, handlerOpts)
}

if (opts.sink) {
  await node.handle(SINK, async ({ stream }) => {
    try {
      const hash = createHash('sha256')
      let count = 0
      for await (const chunk of stream.source) {
        const bytes = chunk.subarray()
        count += bytes.length
        hash.update(bytes)
      }
      await stream.sink([Buffer.from(`${count} ${hash.digest('hex')}\n`)])
    } catch (err) {
      log('sink handler:', err.message)
      stream.abort(err)
    }
  }, handlerOpts)
}

if (opts.perf) {
  await node.handle(PERF, async ({ stream }) => {
    try {
      let header = Buffer.alloc(0)
      for await (const chunk of stream.source) {
        if (header.length < 8) header = Buffer.concat([header, Buffer.from(chunk.subarray())])
      }
      if (header.length < 8) throw new Error('perf: EOF before the 8-byte length')
      const n = header.readBigUInt64BE(0)
      const unlimited = n >= 2n ** 53n
      let left = Number(n)
      const block = Buffer.alloc(CHUNK)
      await stream.sink((async function * () {
        while (unlimited || left > 0) {
          const len = unlimited ? CHUNK : Math.min(CHUNK, left)
          left -= len
          yield block.subarray(0, len)
        }
      })())
    } catch (err) {
      log('perf handler:', err.message)
      stream.abort(err)
    }
  }, handlerOpts)
}

// ------------------------------------------------------- event tracking

const identified = new Map() // peer id string -> latest IdentifyResult (response or push)
const identifyWaiters = new Map() // peer id string -> [resolve]

function identifyJSON (r) {
  return {
    peer_id: r.peerId.toString(),
    agent_version: r.agentVersion ?? null,
    protocol_version: r.protocolVersion ?? null,
    protocols: [...r.protocols].sort(),
    listen_addrs: r.listenAddrs.map(String),
    observed_addr: r.observedAddr?.toString() ?? null,
    public_key_hex: r.publicKey != null ? hex(r.publicKey) : null,
    signed_peer_record: r.signedPeerRecord != null
      ? { seq: r.signedPeerRecord.seq?.toString(), addrs: r.signedPeerRecord.addresses.map(String) }
      : null
  }
}

node.addEventListener('peer:identify', (evt) => {
  const r = evt.detail
  const key = r.peerId.toString()
  // identify push carries no publicKey/observedAddr: keep those from earlier messages
  const prev = identified.get(key)
  identified.set(key, {
    ...r,
    publicKey: r.publicKey ?? prev?.publicKey,
    observedAddr: r.observedAddr ?? prev?.observedAddr,
    signedPeerRecord: r.signedPeerRecord ?? prev?.signedPeerRecord
  })
  for (const resolve of identifyWaiters.get(key) ?? []) resolve(identified.get(key))
  identifyWaiters.delete(key)
  send({ event: 'identify', ...identifyJSON(r) })
})

function connJSON (c) {
  return {
    conn_id: c.id,
    peer_id: c.remotePeer.toString(),
    remote_addr: c.remoteAddr.toString(),
    direction: c.direction,
    status: c.status,
    muxer: c.multiplexer ?? null,
    encryption: c.encryption ?? null,
    limited: c.limits != null,
    streams: c.streams.map(s => s.protocol ?? null)
  }
}

node.addEventListener('connection:open', (evt) => send({ event: 'connection_open', ...connJSON(evt.detail) }))
node.addEventListener('connection:close', (evt) => send({ event: 'connection_close', ...connJSON(evt.detail) }))

if (services.pubsub != null) {
  node.services.pubsub.addEventListener('message', (evt) => {
    const m = evt.detail
    send({
      event: 'message',
      topic: m.topic,
      from: m.type === 'signed' ? m.from.toString() : null,
      data_b64: Buffer.from(m.data).toString('base64'),
      seqno_hex: m.type === 'signed' ? seqnoHex(m.sequenceNumber) : null
    })
  })
  for (const topic of opts.topic ?? []) node.services.pubsub.subscribe(topic)
}

// ------------------------------------------------------------ commands

function needPeer (args) {
  if (typeof args.peer !== 'string') throw new Error('missing "peer"')
  return peerIdFromString(args.peer)
}

function needService (name) {
  const svc = node.services[name]
  if (svc == null) throw new Error(`service ${name} not enabled (start flag missing)`)
  return svc
}

async function connectionTo (peerId, signal) {
  const open = node.getConnections(peerId).filter(c => c.status === 'open')
  // prefer a direct connection over a relayed (limited) one
  open.sort((a, b) => Number(a.limits != null) - Number(b.limits != null))
  if (open.length > 0) return open[0]
  return node.dial(peerId, { signal })
}

function statusJSON () {
  const s = {
    peer_id: node.peerId.toString(),
    addrs: node.getMultiaddrs().map(String),
    circuit_addrs: node.getMultiaddrs().map(String).filter(a => a.includes('/p2p-circuit')),
    protocols: node.getProtocols().sort(),
    connections: node.getConnections().length
  }
  if (node.services.dht != null) {
    s.dht_mode = node.services.dht.getMode()
    s.dht_routing_table = [...(node.services.dht.routingTable?.kb?.toIterable?.() ?? [])].map(c => c.peerId?.toString())
  }
  try {
    s.address_info = node.components.addressManager.getAddressesWithMetadata().map(a => ({
      addr: a.multiaddr.toString(), verified: a.verified, type: a.type
    }))
  } catch {}
  return s
}

const commands = {
  async dial ({ addr }, signal) {
    if (typeof addr !== 'string') throw new Error('missing "addr"')
    const conn = await node.dial(multiaddr(addr), { signal })
    return { peer_id: conn.remotePeer.toString(), remote_addr: conn.remoteAddr.toString(), ...connJSON(conn) }
  },

  async hangup (args) {
    await node.hangUp(needPeer(args))
    return {}
  },

  async peers () {
    return { peers: node.getConnections().map(connJSON) }
  },

  async identify (args, signal) {
    const peerId = needPeer(args)
    const key = peerId.toString()
    if (args.fresh) {
      const conn = await connectionTo(peerId, signal)
      return identifyJSON(await node.services.identify.identify(conn, { signal }))
    }
    let r = identified.get(key)
    if (r == null) {
      r = await new Promise((resolve, reject) => {
        const list = identifyWaiters.get(key) ?? []
        list.push(resolve)
        identifyWaiters.set(key, list)
        signal.addEventListener('abort', () => reject(new Error(`no identify from ${key} yet`)), { once: true })
      })
    }
    return identifyJSON(r)
  },

  async ping (args, signal) {
    const peerId = needPeer(args)
    const target = args.addr != null ? multiaddr(args.addr) : peerId
    const rtt = await node.services.ping.ping(target, { signal })
    return { rtt_ms: rtt }
  },

  async echo (args, signal) {
    const peerId = needPeer(args)
    const size = args.size ?? 1024
    const n = args.streams ?? 1
    const conn = await connectionTo(peerId, signal)
    const start = performance.now()
    await Promise.all(Array.from({ length: n }, async (_, i) => {
      const data = pattern(i, size)
      const stream = await conn.newStream(ECHO, streamOpts(signal))
      const [, got] = await Promise.all([stream.sink(chunks(data)), readAll(stream.source)])
      if (!got.equals(data)) {
        throw new Error(`echo stream ${i}: sent ${data.length} bytes, got ${got.length} back, content ${got.length === data.length ? 'differs' : 'truncated'}`)
      }
    }))
    return { streams: n, size, seconds: (performance.now() - start) / 1000 }
  },

  async sink (args, signal) {
    const peerId = needPeer(args)
    const size = args.size ?? 1024
    const data = pattern(args.seed ?? 'sink', size)
    const expected = createHash('sha256').update(data).digest('hex')
    const conn = await connectionTo(peerId, signal)
    const start = performance.now()
    const stream = await conn.newStream(SINK, streamOpts(signal))
    const [, reply] = await Promise.all([stream.sink(chunks(data)), readAll(stream.source)])
    const text = reply.toString('utf8').trim()
    const [count, sha] = text.split(/\s+/)
    return {
      reply: text,
      count: Number(count),
      sha256: sha ?? null,
      expected_count: size,
      expected_sha256: expected,
      match: Number(count) === size && sha === expected,
      seconds: (performance.now() - start) / 1000
    }
  },

  async perf (args, signal) {
    const peerId = needPeer(args)
    const upload = args.upload ?? 0
    const download = args.download ?? 0
    const conn = await connectionTo(peerId, signal)
    const start = performance.now()
    const stream = await conn.newStream(PERF, streamOpts(signal))
    const header = Buffer.alloc(8)
    header.writeBigUInt64BE(BigInt(download))
    const block = Buffer.alloc(CHUNK)
    let uploadDone = 0
    const [, downloaded] = await Promise.all([
      stream.sink((async function * () {
        yield header
        for (let left = upload; left > 0; left -= CHUNK) yield block.subarray(0, Math.min(CHUNK, left))
        uploadDone = performance.now()
      })()),
      (async () => {
        let got = 0
        for await (const chunk of stream.source) got += chunk.byteLength
        return got
      })()
    ])
    const end = performance.now()
    return {
      uploaded: upload,
      downloaded,
      seconds: (end - start) / 1000,
      upload_seconds: (uploadDone - start) / 1000
    }
  },

  async subscribe ({ topic }) {
    needService('pubsub').subscribe(topic)
    return {}
  },

  async unsubscribe ({ topic }) {
    needService('pubsub').unsubscribe(topic)
    return {}
  },

  async publish ({ topic, data_b64: b64 }) {
    const res = await needService('pubsub').publish(topic, Buffer.from(b64 ?? '', 'base64'))
    return { recipients: (res?.recipients ?? []).map(String) }
  },

  async pubsub_peers ({ topic }) {
    const ps = needService('pubsub')
    return {
      subscribers: topic != null ? ps.getSubscribers(topic).map(String) : null,
      peers: ps.getPeers().map(String),
      topics: ps.getTopics()
    }
  },

  async find_peer (args, signal) {
    const dht = needService('dht')
    const peerId = needPeer(args)
    const responders = []
    for await (const ev of dht.findPeer(peerId, { signal })) {
      if (ev.name === 'PEER_RESPONSE') responders.push(ev.from.toString())
      if (ev.name === 'FINAL_PEER') {
        return { peer_id: ev.peer.id.toString(), addrs: ev.peer.multiaddrs.map(String), from: ev.from?.toString() ?? null, responders }
      }
    }
    throw new Error(`peer ${peerId} not found (asked ${responders.length} peers)`)
  },

  async closest ({ key_hex: keyHex }, signal) {
    const dht = needService('dht')
    const peers = new Map()
    for await (const ev of dht.getClosestPeers(Buffer.from(keyHex, 'hex'), { signal })) {
      if (ev.name === 'FINAL_PEER') peers.set(ev.peer.id.toString(), ev.peer.multiaddrs.map(String))
    }
    return { peers: [...peers].map(([id, addrs]) => ({ peer_id: id, addrs })) }
  },

  async provide ({ cid }, signal) {
    const dht = needService('dht')
    for await (const ev of dht.provide(CID.parse(cid), { signal })) { void ev }
    return {}
  },

  async find_providers ({ cid, max }, signal) {
    const dht = needService('dht')
    const found = new Map()
    for await (const ev of dht.findProviders(CID.parse(cid), { signal })) {
      if (ev.name === 'PROVIDER') {
        for (const p of ev.providers) found.set(p.id.toString(), p.multiaddrs.map(String))
        if (max != null && found.size >= max) break
      }
    }
    return { providers: [...found].map(([id, addrs]) => ({ peer_id: id, addrs })) }
  },

  async reserve ({ relay_addr: relayAddr }) {
    if (!opts['relay-client']) throw new Error('start with --relay-client to make reservations')
    const relayMa = multiaddr(relayAddr.replace(/\/p2p-circuit$/, ''))
    const relayId = relayMa.getPeerId()
    if (relayId == null) throw new Error('relay_addr must end in /p2p/<relay id>')
    const ma = relayMa.encapsulate('/p2p-circuit')
    await node.components.transportManager.listen([ma])
    // the listener confirms the circuit addresses asynchronously
    let circuit = []
    for (let i = 0; i < 50; i++) {
      circuit = node.getMultiaddrs().map(String).filter(a => a.includes(`/p2p/${relayId}/p2p-circuit`))
      if (circuit.length > 0) break
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    return { relay: relayId, circuit_addrs: circuit }
  },

  async status () {
    return statusJSON()
  },

  async stop () {
    setImmediate(() => shutdown(0))
    return {}
  }
}

// ---------------------------------------------------------------- main

let stopping = false
async function shutdown (code) {
  if (stopping) return
  stopping = true
  try {
    await Promise.race([node.stop(), new Promise(resolve => setTimeout(resolve, 3000))])
  } catch (err) {
    log('stop failed:', err.message)
  }
  process.stdout.write('', () => process.exit(code))
}

async function runCommand (line) {
  let msg
  try {
    msg = JSON.parse(line)
  } catch {
    send({ id: null, ok: false, error: `bad JSON: ${line.slice(0, 200)}` })
    return
  }
  const { id = null, cmd, timeout_ms: timeoutMs, ...args } = msg
  const fn = Object.hasOwn(commands, cmd) ? commands[cmd] : null
  if (fn == null) {
    send({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` })
    return
  }
  const signal = AbortSignal.timeout(timeoutMs ?? DEFAULT_TIMEOUT_MS)
  try {
    const result = await fn(args, signal)
    send({ ...result, id, ok: true })
  } catch (err) {
    log(`command ${cmd} failed:`, err.stack ?? err)
    send({ id, ok: false, error: `${err.name ?? 'Error'}: ${err.message ?? err}` })
  }
}

process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))
process.on('unhandledRejection', (err) => log('unhandled rejection:', err?.stack ?? err))

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => { if (line.trim() !== '') runCommand(line) })
rl.on('close', () => shutdown(0)) // parent went away

send({
  event: 'ready',
  peer_id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map(String),
  protocols: node.getProtocols().sort(),
  dht_mode: node.services.dht?.getMode() ?? null,
  pnet: opts.psk != null
})
log('ready', node.peerId.toString(), node.getMultiaddrs().map(String).join(' '))
