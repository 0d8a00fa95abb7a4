// Count the primes below min(N, 100001) with a sieve.
const n = Math.min(parseInt(require("fs").readFileSync(0, "utf8"), 10), 100001);
const composite = new Uint8Array(n);
let count = 0;
for (let i = 2; i < n; i++) {
  if (composite[i]) continue;
  count++;
  for (let j = i * i; j < n; j += i) composite[j] = 1;
}
console.log(count);
