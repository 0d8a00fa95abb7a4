// Count the primes below min(N, 100001) with a sieve.
package main

import "fmt"

func main() {
	var n int
	fmt.Scan(&n)
	if n > 100001 {
		n = 100001
	}
	composite := make([]bool, n)
	count := 0
	for i := 2; i < n; i++ {
		if composite[i] {
			continue
		}
		count++
		for j := i * i; j < n; j += i {
			composite[j] = true
		}
	}
	fmt.Println(count)
}
