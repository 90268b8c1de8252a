// The two entry points of React's scheduler that KeyFeed uses (the package ships no types of its own).
declare module 'scheduler' {
  export const unstable_IdlePriority: number;
  export function unstable_scheduleCallback(priority: number, callback: () => void): unknown;
}
