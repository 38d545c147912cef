/* the portal's progressive enhancement: filled in by the portal */
