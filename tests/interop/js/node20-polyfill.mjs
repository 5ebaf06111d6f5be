// Node 20 lacks Promise.withResolvers (ES2024, Node >= 22). js-libp2p 2.10's
// peer store uses mortice 3.3 -> it-queue 1.1, which calls it at runtime.
// This is the spec'd behaviour of the built-in; it is a no-op on Node >= 22.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
