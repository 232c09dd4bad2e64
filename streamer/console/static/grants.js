// Who may do what where, as the API decides it (streamer/control/auth.py, docs/api.md "Roles
// and grants"): a role granted on a zone covers its whole subtree, and an action needs one of
// its roles on every zone it touches. The console uses this only to hide or disable controls
// the API would refuse; the API stays the judge.

export const ROLES = ["viewer", "operator", "approver", "emergency", "admin"];
export const OPERATE = ["operator", "admin"];
export const APPROVE = ["approver", "admin"];
export const EMERGENCY = ["emergency", "admin"];
export const ADMIN = ["admin"];

export function covers(ancestor, zone) {
  return zone === ancestor || zone.startsWith(`${ancestor}.`);
}

/** One of `roles` on `zone` (through a grant on it or an ancestor). */
export function allowed(user, roles, zone) {
  return Boolean(user) && !user.disabled &&
    user.grants.some((g) => roles.includes(g.role) && covers(g.zone, zone));
}

/** One of `roles` somewhere. */
export function anywhere(user, roles) {
  return Boolean(user) && !user.disabled && user.grants.some((g) => roles.includes(g.role));
}

/** The roles `user` holds, in the order of ROLES. */
export function heldRoles(user) {
  const held = new Set(user.grants.map((g) => g.role));
  return ROLES.filter((r) => held.has(r));
}
