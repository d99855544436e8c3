//! RFC 6962 / RFC 9162 Merkle trees: leaf hash `SHA-256(0x00 ‖ leaf)`, node hash
//! `SHA-256(0x01 ‖ left ‖ right)`, the empty tree hashes to `SHA-256("")`. Roots,
//! inclusion proofs and consistency proofs, generated and verified.
//!
//! In evidence the leaf data is an envelope's 32-byte hash.

use sha2::{Digest, Sha256};

use crate::hash::Sha256Hex;

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size larger than the tree, or sizes in the wrong order.
    #[error("tree size {size} is out of range")]
    SizeOutOfRange {
        /// The offending size.
        size: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has the wrong length")]
    WrongLength,
    /// The proof does not lead to the expected root(s).
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Sha256Hex {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    Sha256Hex::from_bytes(hasher.finalize().into())
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Sha256Hex, right: &Sha256Hex) -> Sha256Hex {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left.as_bytes());
    hasher.update(right.as_bytes());
    Sha256Hex::from_bytes(hasher.finalize().into())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Sha256Hex {
    Sha256Hex::digest(b"")
}

/// The root over already-hashed leaves.
pub fn merkle_root(leaf_hashes: &[Sha256Hex]) -> Sha256Hex {
    let mut accumulator = MerkleAccumulator::new();
    for leaf in leaf_hashes {
        accumulator.push(*leaf);
    }
    accumulator.root()
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// An append-only tree that keeps only the roots of its perfect subtrees (the
/// "frontier", largest first): O(log n) memory, O(1) amortised per leaf. The
/// recorder keeps one across segments for the cumulative checkpoint root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleAccumulator {
    size: u64,
    frontier: Vec<Sha256Hex>,
}

impl MerkleAccumulator {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds from a saved size and frontier; `None` if they do not fit together.
    pub fn from_frontier(size: u64, frontier: Vec<Sha256Hex>) -> Option<Self> {
        (u64::from(size.count_ones()) == frontier.len() as u64).then_some(Self { size, frontier })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree roots, largest first.
    pub fn frontier(&self) -> &[Sha256Hex] {
        &self.frontier
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Sha256Hex) {
        let mut node = leaf;
        let mut size = self.size;
        // Each trailing 1 bit of the old size is a subtree of equal height to merge with.
        while size & 1 == 1 {
            match self.frontier.pop() {
                Some(left) => node = node_hash(&left, &node),
                None => break,
            }
            size >>= 1;
        }
        self.frontier.push(node);
        self.size += 1;
    }

    /// The current root.
    pub fn root(&self) -> Sha256Hex {
        let mut nodes = self.frontier.iter().rev();
        match nodes.next() {
            None => empty_root(),
            Some(last) => nodes.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

/// A tree kept level by level, for roots at any size and for proofs. Memory is
/// about twice the leaves.
///
/// The tree may continue a log whose first leaves it does not hold: it is then
/// built over a base (the perfect-subtree roots of the log's first `n` leaves,
/// RFC 9162's compact range `[0, n)`) and the leaves from `n` on. Every root of
/// size `n` or more, every inclusion proof of a leaf from `n` on and every
/// consistency proof from a size of `n` or more can still be computed: the nodes
/// they need left of `n` are exactly the base's perfect subtrees.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// Leaves before the first held one (the base's size).
    first_leaf: u64,
    /// Level 0 holds leaf hashes; level L the roots of aligned subtrees of 2^L leaves.
    levels: Vec<Level>,
}

/// One level of a [`MerkleTree`]: the nodes from index `first` on.
#[derive(Debug, Clone)]
struct Level {
    first: u64,
    nodes: Vec<Sha256Hex>,
}

impl Level {
    fn get(&self, index: u64) -> Option<Sha256Hex> {
        let offset = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.nodes.get(offset).copied()
    }
}

impl MerkleTree {
    /// Builds the tree over already-hashed leaves.
    pub fn new(leaf_hashes: Vec<Sha256Hex>) -> Self {
        Self::after(&MerkleAccumulator::new(), leaf_hashes)
    }

    /// Builds the tree of a log whose first `base.size()` leaves are known only by
    /// their perfect-subtree roots, followed by `leaf_hashes`.
    pub fn after(base: &MerkleAccumulator, leaf_hashes: Vec<Sha256Hex>) -> Self {
        let first_leaf = base.size();
        let size = first_leaf + leaf_hashes.len() as u64;
        // The base's frontier, largest first, is one subtree per set bit of its size.
        let mut frontier = base.frontier().iter();
        let mut base_node = [None; 64];
        for height in (0..64).rev() {
            if first_leaf >> height & 1 == 1 {
                base_node[height] = frontier.next().copied();
            }
        }
        let mut levels = vec![Level {
            first: first_leaf,
            nodes: leaf_hashes,
        }];
        let mut height = 0usize;
        while let Some(below) = levels.last_mut() {
            // The level starts at index `first_leaf >> height`; when that is odd
            // its left sibling is the base's subtree of this height.
            if below.first & 1 == 1 {
                match base_node.get(height).copied().flatten() {
                    Some(node) => {
                        below.nodes.insert(0, node);
                        below.first -= 1;
                    }
                    None => {
                        if !below.nodes.is_empty() {
                            below.nodes.remove(0);
                        }
                        below.first += 1;
                    }
                }
            }
            height += 1;
            if height >= 64 || 1u64 << height > size {
                break;
            }
            let above = Level {
                first: below.first / 2,
                nodes: below
                    .nodes
                    .chunks_exact(2)
                    .map(|pair| match pair {
                        [left, right] => node_hash(left, right),
                        _ => empty_root(),
                    })
                    .collect(),
            };
            levels.push(above);
        }
        Self { first_leaf, levels }
    }

    /// Number of leaves, the base's included.
    pub fn size(&self) -> u64 {
        self.first_leaf + self.leaves().len() as u64
    }

    /// Index of the first leaf held (the base's size; 0 for a whole tree).
    pub fn first_leaf(&self) -> u64 {
        self.first_leaf
    }

    /// The leaf hashes held, from [`Self::first_leaf`] on.
    pub fn leaves(&self) -> &[Sha256Hex] {
        self.levels.first().map_or(&[], |level| {
            let skip = usize::try_from(self.first_leaf - level.first).unwrap_or(0);
            level.nodes.get(skip..).unwrap_or_default()
        })
    }

    /// The leaf hash at log position `index`, if held.
    pub fn leaf(&self, index: u64) -> Option<&Sha256Hex> {
        let offset = usize::try_from(index.checked_sub(self.first_leaf)?).ok()?;
        self.leaves().get(offset)
    }

    /// The root of the first `size` leaves (`size` from the base's size on).
    pub fn root_at(&self, size: u64) -> Result<Sha256Hex, ProofError> {
        if size > self.size() || size < self.first_leaf {
            return Err(ProofError::SizeOutOfRange { size });
        }
        if size == 0 {
            return Ok(empty_root());
        }
        self.subtree(0, size)
    }

    /// `MTH(D[start : start + len])`. Left children in the RFC recursion are always
    /// aligned perfect subtrees, so only the right spine is recomputed.
    fn subtree(&self, start: u64, len: u64) -> Result<Sha256Hex, ProofError> {
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros() as usize;
            return self
                .levels
                .get(level)
                .and_then(|nodes| nodes.get(start / len))
                .ok_or(ProofError::SizeOutOfRange { size: start + len });
        }
        let k = split_point(len);
        Ok(node_hash(
            &self.subtree(start, k)?,
            &self.subtree(start + k, len - k)?,
        ))
    }

    /// The RFC 6962 audit path for leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Sha256Hex>, ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeOutOfRange { size });
        }
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        if index < self.first_leaf {
            // Only the base's subtree roots are held, not the nodes beside this leaf.
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof)?;
        Ok(proof)
    }

    fn path(
        &self,
        index: u64,
        start: u64,
        len: u64,
        proof: &mut Vec<Sha256Hex>,
    ) -> Result<(), ProofError> {
        if len <= 1 {
            return Ok(());
        }
        let k = split_point(len);
        if index < k {
            self.path(index, start, k, proof)?;
            proof.push(self.subtree(start + k, len - k)?);
        } else {
            self.path(index - k, start + k, len - k, proof)?;
            proof.push(self.subtree(start, k)?);
        }
        Ok(())
    }

    /// The RFC 6962 consistency proof from the first `old_size` leaves to the first
    /// `new_size`. Empty when `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Sha256Hex>, ProofError> {
        if new_size > self.size() {
            return Err(ProofError::SizeOutOfRange { size: new_size });
        }
        if old_size > new_size || (old_size > 0 && old_size < self.first_leaf) {
            return Err(ProofError::SizeOutOfRange { size: old_size });
        }
        let mut proof = Vec::new();
        if old_size > 0 && old_size < new_size {
            self.subproof(old_size, 0, new_size, true, &mut proof)?;
        }
        Ok(proof)
    }

    fn subproof(
        &self,
        m: u64,
        start: u64,
        n: u64,
        complete: bool,
        proof: &mut Vec<Sha256Hex>,
    ) -> Result<(), ProofError> {
        if m == n {
            if !complete {
                proof.push(self.subtree(start, n)?);
            }
            return Ok(());
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, k, complete, proof)?;
            proof.push(self.subtree(start + k, n - k)?);
        } else {
            self.subproof(m - k, start + k, n - k, false, proof)?;
            proof.push(self.subtree(start, k)?);
        }
        Ok(())
    }
}

/// RFC 9162 §2.1.3.2: verifies that `leaf` sits at `index` in the tree of `size`
/// leaves with root `root`.
pub fn verify_inclusion(
    leaf: &Sha256Hex,
    index: u64,
    size: u64,
    proof: &[Sha256Hex],
    root: &Sha256Hex,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// RFC 9162 §2.1.4.2: verifies that the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` leaves with root `old_root`.
/// As in the reference implementations, size 0 is consistent with anything and
/// equal sizes need equal roots; both take an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Sha256Hex,
    new_root: &Sha256Hex,
    proof: &[Sha256Hex],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOutOfRange { size: old_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let (first, rest) = proof.split_first().ok_or(ProofError::WrongLength)?;
    // When the old tree is a perfect subtree its root is the proof's implicit first node.
    let (seed, path) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*seed, *seed);
    for c in path {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if f_r == *old_root && s_r == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Certificate Transparency reference tree (merkle_tree_test.cc).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// Roots for sizes 1..=8.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(s: &str) -> Sha256Hex {
        Sha256Hex::parse(s).unwrap()
    }

    fn hs(items: &[&str]) -> Vec<Sha256Hex> {
        items.iter().map(|s| h(s)).collect()
    }

    fn leaves() -> Vec<Sha256Hex> {
        LEAVES
            .iter()
            .map(|l| leaf_hash(&hex::decode(l).unwrap()))
            .collect()
    }

    #[test]
    fn empty_tree_hash() {
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(merkle_root(&[]), empty_root());
        assert_eq!(MerkleTree::new(vec![]).root_at(0).unwrap(), empty_root());
    }

    #[test]
    fn reference_roots_for_sizes_1_to_8() {
        let leaves = leaves();
        let tree = MerkleTree::new(leaves.clone());
        let mut accumulator = MerkleAccumulator::new();
        for (n, expected) in ROOTS.iter().enumerate() {
            accumulator.push(leaves[n]);
            assert_eq!(
                merkle_root(&leaves[..=n]).to_hex(),
                *expected,
                "size {}",
                n + 1
            );
            assert_eq!(
                tree.root_at(n as u64 + 1).unwrap().to_hex(),
                *expected,
                "size {}",
                n + 1
            );
            assert_eq!(accumulator.root().to_hex(), *expected, "size {}", n + 1);
        }
    }

    #[test]
    fn reference_inclusion_proofs() {
        let leaves = leaves();
        let tree = MerkleTree::new(leaves.clone());
        let cases: [(u64, u64, Vec<Sha256Hex>); 5] = [
            (0, 1, vec![]),
            (
                0,
                8,
                hs(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                5,
                8,
                hs(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                3,
                hs(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            ),
            (
                1,
                5,
                hs(&[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (index, size, expected) in cases {
            let proof = tree.inclusion_proof(index, size).unwrap();
            assert_eq!(proof, expected, "leaf {index} of {size}");
            let root = h(ROOTS[size as usize - 1]);
            verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
        }
    }

    #[test]
    fn reference_consistency_proofs() {
        let tree = MerkleTree::new(leaves());
        let cases: [(u64, u64, Vec<Sha256Hex>); 4] = [
            (1, 1, vec![]),
            (
                1,
                8,
                hs(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hs(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                hs(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (old, new, expected) in cases {
            let proof = tree.consistency_proof(old, new).unwrap();
            assert_eq!(proof, expected, "{old} -> {new}");
            verify_consistency(
                old,
                new,
                &h(ROOTS[old as usize - 1]),
                &h(ROOTS[new as usize - 1]),
                &proof,
            )
            .unwrap();
        }
    }

    #[test]
    fn every_proof_in_small_trees_verifies_and_mangled_ones_do_not() {
        let leaves: Vec<Sha256Hex> = (0u16..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let tree = MerkleTree::new(leaves.clone());
        for size in 1..=40u64 {
            let root = tree.root_at(size).unwrap();
            assert_eq!(root, merkle_root(&leaves[..size as usize]));
            for index in 0..size {
                let proof = tree.inclusion_proof(index, size).unwrap();
                verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
                if let Some(last) = proof.last() {
                    let mut flipped = proof.clone();
                    let mut bytes = *last.as_bytes();
                    bytes[0] ^= 1;
                    *flipped.last_mut().unwrap() = Sha256Hex::from_bytes(bytes);
                    assert!(
                        verify_inclusion(&leaves[index as usize], index, size, &flipped, &root)
                            .is_err()
                    );
                    assert!(
                        verify_inclusion(&leaves[index as usize], index, size, &proof[1..], &root)
                            .is_err()
                    );
                }
                let mut extended = proof.clone();
                extended.push(root);
                assert!(
                    verify_inclusion(&leaves[index as usize], index, size, &extended, &root)
                        .is_err()
                );
            }
            for old in 0..=size {
                let old_root = tree.root_at(old).unwrap();
                let proof = tree.consistency_proof(old, size).unwrap();
                verify_consistency(old, size, &old_root, &root, &proof).unwrap();
                if !proof.is_empty() {
                    assert!(verify_consistency(old, size, &old_root, &root, &proof[1..]).is_err());
                    let wrong_old = tree.root_at(old - 1).unwrap();
                    assert!(verify_consistency(old, size, &wrong_old, &root, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn degenerate_consistency_cases() {
        let tree = MerkleTree::new(leaves());
        let r4 = tree.root_at(4).unwrap();
        let r5 = tree.root_at(5).unwrap();
        assert!(verify_consistency(4, 4, &r4, &r4, &[]).is_ok());
        assert_eq!(
            verify_consistency(4, 4, &r4, &r5, &[]),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(4, 4, &r4, &r4, &[r4]),
            Err(ProofError::WrongLength)
        );
        assert!(verify_consistency(0, 5, &empty_root(), &r5, &[]).is_ok());
        assert_eq!(
            verify_consistency(5, 4, &r5, &r4, &[]),
            Err(ProofError::SizeOutOfRange { size: 5 })
        );
        assert_eq!(
            verify_consistency(2, 5, &tree.root_at(2).unwrap(), &r5, &[]),
            Err(ProofError::WrongLength)
        );
        assert!(tree.inclusion_proof(8, 8).is_err());
        assert!(tree.consistency_proof(3, 9).is_err());
    }

    #[test]
    fn a_tree_after_a_base_gives_the_whole_trees_roots_and_proofs() {
        let all: Vec<Sha256Hex> = (0u32..23).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let whole = MerkleTree::new(all.clone());
        for base_size in 0..all.len() {
            let (prefix, rest) = all.split_at(base_size);
            let mut base = MerkleAccumulator::new();
            prefix.iter().for_each(|leaf| base.push(*leaf));
            let tree = MerkleTree::after(&base, rest.to_vec());
            let base_size = base_size as u64;
            assert_eq!(tree.size(), whole.size());
            assert_eq!(tree.first_leaf(), base_size);
            assert_eq!(tree.leaves(), rest);
            assert_eq!(tree.root_at(base_size).unwrap(), base.root());
            for size in base_size.max(1)..=whole.size() {
                assert_eq!(
                    tree.root_at(size),
                    whole.root_at(size),
                    "base {base_size} size {size}"
                );
                for index in base_size..size {
                    assert_eq!(
                        tree.inclusion_proof(index, size),
                        whole.inclusion_proof(index, size)
                    );
                }
                for old in base_size.max(1)..=size {
                    assert_eq!(
                        tree.consistency_proof(old, size),
                        whole.consistency_proof(old, size)
                    );
                }
            }
            if base_size > 1 {
                assert!(tree.root_at(base_size - 1).is_err());
                assert!(tree.inclusion_proof(base_size - 1, base_size).is_err());
                assert!(tree.consistency_proof(base_size - 1, whole.size()).is_err());
                assert!(tree.leaf(base_size - 1).is_none());
            }
        }
    }

    #[test]
    fn accumulator_round_trips_through_its_frontier() {
        let mut accumulator = MerkleAccumulator::new();
        for i in 0u8..13 {
            accumulator.push(leaf_hash(&[i]));
        }
        let restored =
            MerkleAccumulator::from_frontier(accumulator.size(), accumulator.frontier().to_vec())
                .unwrap();
        assert_eq!(restored.root(), accumulator.root());
        assert!(MerkleAccumulator::from_frontier(12, accumulator.frontier().to_vec()).is_none());
    }
}
