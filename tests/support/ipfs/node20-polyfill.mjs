// Node 20 lacks Promise.withResolvers (ES2024, Node >= 22). js-ipfs 0.66.1 is
// run with mortice pinned to 3.0.6 (see package.json), which avoids it; this
// guards any other dependency that still calls it. No-op on Node >= 22.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
